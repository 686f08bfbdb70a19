//! Turning an extracted value into the text stored in `process_instance_metadata.value`.
//!
//! Pure functions, no PostgreSQL: the default format reproduces what SpiffWorkflow stores,
//! which is Python's `str()` of the value `json.loads` produced, cut to 255 characters; the
//! `json` format reproduces `jsonb #>> '{}'`. Numbers arrive as their decimal text, exactly as
//! written (json) or as jsonb prints them, so integers of any size stay exact.

use crate::extract::python::PythonVersion;
use crate::extract::value::{PyStr, Value};
use std::fmt::Write;

/// The longest value `process_instance_metadata.value` (varchar(255)) holds, in characters.
pub const MAX_VALUE_CHARS: usize = 255;

/// Rendering stops once it has written this many bytes: at least MAX_VALUE_CHARS + 1
/// characters, so the cut is the same as if it had gone on. Every level of a container writes
/// a character before anything nested in it, so this also bounds how deep rendering goes.
const RENDER_BYTES: usize = 4 * (MAX_VALUE_CHARS + 1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueFormat {
    /// Python's `str(value)`, what SpiffWorkflow writes.
    Python,
    /// `jsonb #>> '{}'`.
    Json,
}

/// How to render: the format, and the Python whose `str()` the python format reproduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    pub format: ValueFormat,
    pub python: PythonVersion,
}

/// A value that has no text to store: SpiffWorkflow's own write of it fails too.
#[derive(Debug, PartialEq, Eq)]
pub enum Unstorable {
    /// The text holds U+0000, which PostgreSQL's text cannot.
    Nul,
    /// The text holds a lone surrogate (`"\ud800"` in the JSON), which UTF-8 cannot encode.
    LoneSurrogate,
    /// `str()` of the value nests deeper than Python's recursion limit allows.
    TooDeep { levels: usize, limit: usize },
}

/// Renders a value, or `None` for JSON `null` (stored as SQL NULL), cut to 255 characters.
pub fn render(value: &Value, style: Style) -> Result<Option<String>, Unstorable> {
    let out = match value {
        Value::Null => return Ok(None),
        Value::Str(s) => {
            let mut out = String::new();
            for code in s.code_points().take(MAX_VALUE_CHARS) {
                match char::from_u32(code) {
                    Some('\0') => return Err(Unstorable::Nul),
                    Some(c) => out.push(c),
                    None => return Err(Unstorable::LoneSurrogate),
                }
            }
            return Ok(Some(out));
        }
        Value::List(_) | Value::Dict(_) if style.format == ValueFormat::Python => {
            let (levels, limit) = (value.str_levels(), style.python.str_depth());
            if levels > limit {
                return Err(Unstorable::TooDeep { levels, limit });
            }
            let mut out = String::new();
            python_repr(value, style.python, &mut out);
            out
        }
        _ => {
            let mut out = String::new();
            match style.format {
                ValueFormat::Python => python_repr(value, style.python, &mut out),
                ValueFormat::Json => jsonb_text(value, &mut out),
            }
            out
        }
    };
    let mut out = out;
    truncate_chars(&mut out, MAX_VALUE_CHARS);
    Ok(Some(out))
}

/// Cuts `s` to at most `max` characters; a character is never split.
pub fn truncate_chars(s: &mut String, max: usize) {
    if let Some((byte_index, _)) = s.char_indices().nth(max) {
        s.truncate(byte_index);
    }
}

/// Python's `repr()` of the value `json.loads` would give (for a top-level string `str()` is
/// the string itself, which `render` handles before coming here). Stops at RENDER_BYTES.
fn python_repr(value: &Value, python: PythonVersion, out: &mut String) {
    if out.len() >= RENDER_BYTES {
        return;
    }
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => python_number(n, out),
        Value::Str(s) => python_str_repr(s, python, out),
        Value::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if out.len() >= RENDER_BYTES {
                    return;
                }
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(item, python, out);
            }
            out.push(']');
        }
        Value::Dict(members) => {
            out.push('{');
            for (i, (k, v)) in members.iter().enumerate() {
                if out.len() >= RENDER_BYTES {
                    return;
                }
                if i > 0 {
                    out.push_str(", ");
                }
                python_str_repr(k, python, out);
                out.push_str(": ");
                python_repr(v, python, out);
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

/// Python's `repr(float)`: the shortest digits that read back as the same double, the one
/// nearest the double's exact value among them and, of two equally near, the one with the even
/// last digit (David Gay's dtoa, mode 0); in positional notation when the decimal exponent is
/// in [-4, 16), scientific with a signed two-digit exponent otherwise.
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
    // Ryū chooses the same digits as Gay's mode 0, ties to even included (Rust's own `{:e}`
    // rounds a tie up); it only spells them its own way.
    let mut buffer = ryu::Buffer::new();
    let (digits, decpt) = digits_and_point(buffer.format_finite(x.abs()));
    let digits = digits.as_str();
    if x < 0.0 {
        out.push('-');
    }
    if -4 < decpt && decpt <= 16 {
        if decpt <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-decpt) as usize));
            out.push_str(digits);
        } else {
            let decpt = decpt as usize;
            if digits.len() <= decpt {
                out.push_str(digits);
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
        let _ = write!(out, "e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
}

/// The significant digits of a positive number Ryū printed ("123.0", "0.0001", "1.5e-7") and
/// Python's `decpt`: the number is 0.DIGITS times 10 to the power decpt.
fn digits_and_point(printed: &str) -> (String, i32) {
    let (mantissa, exponent) = match printed.split_once('e') {
        Some((mantissa, exponent)) => (mantissa, exponent.parse::<i32>().unwrap_or(0)),
        None => (printed, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all = [whole, fraction].concat();
    let leading_zeros = all.len() - all.trim_start_matches('0').len();
    let point = whole.len() as i32 - leading_zeros as i32 + exponent;
    (all.trim_matches('0').to_owned(), point)
}

/// Python's `repr(str)`: single quotes unless the text has a single quote and no double quote;
/// backslash escapes for the quote, `\`, `\t`, `\n`, `\r`; `\xNN`, `\uNNNN`, `\UNNNNNNNN` for
/// the code points that version of Python does not consider printable (lone surrogates too).
fn python_str_repr(s: &PyStr, python: PythonVersion, out: &mut String) {
    let bytes = s.as_bytes();
    let quote = if bytes.contains(&b'\'') && !bytes.contains(&b'"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for code in s.code_points() {
        if out.len() >= RENDER_BYTES {
            return;
        }
        match char::from_u32(code) {
            Some('\\') => out.push_str("\\\\"),
            Some('\t') => out.push_str("\\t"),
            Some('\n') => out.push_str("\\n"),
            Some('\r') => out.push_str("\\r"),
            Some(c) if c == quote => {
                out.push('\\');
                out.push(c);
            }
            Some(c) if python.is_printable(code) => out.push(c),
            _ => {
                let _ = match code {
                    0..=0xff => write!(out, "\\x{code:02x}"),
                    0x100..=0xffff => write!(out, "\\u{code:04x}"),
                    _ => write!(out, "\\U{code:08x}"),
                };
            }
        }
    }
    out.push(quote);
}

/// The text `jsonb_out` prints for a value: `", "` and `": "` separators, strings escaped as
/// PostgreSQL's `escape_json` does.
fn jsonb_text(value: &Value, out: &mut String) {
    if out.len() >= RENDER_BYTES {
        return;
    }
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(n),
        Value::Str(s) => jsonb_escape(s, out),
        Value::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if out.len() >= RENDER_BYTES {
                    return;
                }
                if i > 0 {
                    out.push_str(", ");
                }
                jsonb_text(item, out);
            }
            out.push(']');
        }
        Value::Dict(members) => {
            out.push('{');
            for (i, (k, v)) in members.iter().enumerate() {
                if out.len() >= RENDER_BYTES {
                    return;
                }
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

/// A JSON string as `escape_json` writes it; a lone surrogate (only json text holds one) as
/// the escape it was written with.
fn jsonb_escape(s: &PyStr, out: &mut String) {
    out.push('"');
    for code in s.code_points() {
        if out.len() >= RENDER_BYTES {
            return;
        }
        match char::from_u32(code) {
            Some('"') => out.push_str("\\\""),
            Some('\\') => out.push_str("\\\\"),
            Some('\u{8}') => out.push_str("\\b"),
            Some('\u{c}') => out.push_str("\\f"),
            Some('\n') => out.push_str("\\n"),
            Some('\r') => out.push_str("\\r"),
            Some('\t') => out.push_str("\\t"),
            Some(c) if code >= 0x20 => out.push(c),
            _ => {
                let _ = write!(out, "\\u{code:04x}");
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn styled(json: &str, format: ValueFormat) -> Option<String> {
        let value = Value::from_serde(&serde_json::from_str(json).unwrap());
        let python = PythonVersion::V3_13;
        render(&value, Style { format, python }).unwrap()
    }

    fn py(json: &str) -> Option<String> {
        styled(json, ValueFormat::Python)
    }

    fn js(json: &str) -> Option<String> {
        styled(json, ValueFormat::Json)
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
    fn str_deeper_than_python_prints_is_refused() {
        fn dicts(levels: usize) -> Value {
            let mut value = Value::Number("1".into());
            for _ in 0..levels {
                value = Value::Dict([(PyStr::from("a"), value)].into_iter().collect());
            }
            value
        }
        let style = |python| Style {
            format: ValueFormat::Python,
            python,
        };
        // Python 3.12's str() makes at most 1497 nested calls: 1496 dicts and the scalar.
        assert!(render(&dicts(1496), style(PythonVersion::V3_12)).is_ok());
        assert_eq!(
            render(&dicts(1497), style(PythonVersion::V3_12)),
            Err(Unstorable::TooDeep {
                levels: 1498,
                limit: 1497
            })
        );
        assert!(render(&dicts(1497), style(PythonVersion::V3_13)).is_ok());
        // The json format has no such limit.
        let json = Style {
            format: ValueFormat::Json,
            python: PythonVersion::V3_12,
        };
        assert!(render(&dicts(20_000), json)
            .unwrap()
            .unwrap()
            .starts_with("{\"a\": {\"a\": "));
    }

    #[test]
    fn printability_follows_the_python_version() {
        let value = Value::List(vec![Value::Str(PyStr::from("\u{1c89}\u{1fae8}"))]);
        let style = |python| Style {
            format: ValueFormat::Python,
            python,
        };
        let got = |python| render(&value, style(python)).unwrap().unwrap();
        assert_eq!(got(PythonVersion::V3_11), r"['\u1c89\U0001fae8']");
        assert_eq!(got(PythonVersion::V3_13), "['\\u1c89\u{1fae8}']");
        assert_eq!(got(PythonVersion::V3_14), "['\u{1c89}\u{1fae8}']");
    }

    #[test]
    fn float_ties_go_to_the_even_digit() {
        // Both neighbours of each exact value read back as the same double and are equally
        // near it; Python (and these expectations, from CPython 3.11) keeps the even one.
        // The exact values, as text: Rust's own shortest formatting rounds them up (…63, …648.3).
        let cases = [
            ("68269225.228515625", "68269225.22851562"),
            ("2019090039296648.25", "2019090039296648.2"),
            ("0.000244140625", "0.000244140625"),
        ];
        for (exact, expected) in cases {
            let mut out = String::new();
            python_float_repr(exact.parse().unwrap(), &mut out);
            assert_eq!(out, expected, "value {exact}");
        }
    }

    /// Not run by default: BACKFILL_FLOAT_REPRS names a file of lines "<bits in hex> <repr>"
    /// written by Python (docs/extraction.md, "Exact to the character", has the command), every one of
    /// which must match.
    #[test]
    #[ignore]
    fn float_repr_matches_a_file_python_wrote() {
        let file = std::env::var("BACKFILL_FLOAT_REPRS").expect("BACKFILL_FLOAT_REPRS");
        let text = std::fs::read_to_string(file).unwrap();
        let (mut lines, mut differ) = (0, Vec::new());
        for line in text.lines() {
            let (bits, expected) = line.split_once(' ').unwrap();
            let x = f64::from_bits(u64::from_str_radix(bits, 16).unwrap());
            let mut out = String::new();
            python_float_repr(x, &mut out);
            if out != expected {
                differ.push(format!("{bits}: Python {expected}, backfill {out}"));
            }
            lines += 1;
        }
        println!("{lines} doubles, {} differ", differ.len());
        assert!(differ.is_empty(), "{:?}", &differ[..differ.len().min(10)]);
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
