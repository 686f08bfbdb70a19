//! `metadata_extraction_paths`: validation and parsing. Pure, no PostgreSQL.
//!
//! A valid value is a JSON array of objects `{"key": text, "path": text}`: keys non-empty, at
//! most 255 characters and unique; paths non-empty, and a path starting with `$` must be a
//! valid JSONPath expression. Other members of an element are ignored.

use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;

/// The longest key `process_instance_metadata.key` (varchar(255)) holds, in characters.
pub const MAX_KEY_CHARS: usize = 255;
/// The most paths one model may have. Every path is extracted from every instance of the model,
/// so far fewer make sense; the bound keeps validation (and a job's work per instance) bounded.
pub const MAX_PATHS: usize = 1000;
/// The longest path, in bytes. JSONPath parsing recurses into nested expressions; a bound on the
/// length bounds that recursion, well below the stack PostgreSQL gives a backend.
pub const MAX_PATH_BYTES: usize = 1024;

/// How a path finds its value in the task data.
#[derive(Clone, Debug)]
pub enum PathExpr {
    /// `a.b.c`: descend through objects only.
    Dotted(Vec<String>),
    /// `$...`: a JSONPath expression; its first match.
    JsonPath(Box<JpQuery>),
}

impl PathExpr {
    /// Parses a path; `Err` carries the JSONPath parser's explanation.
    pub fn parse(path: &str) -> Result<PathExpr, String> {
        if path.starts_with('$') {
            parse_json_path(path)
                .map(|q| PathExpr::JsonPath(Box::new(q)))
                .map_err(|e| e.to_string())
        } else {
            Ok(PathExpr::Dotted(
                path.split('.').map(str::to_owned).collect(),
            ))
        }
    }
}

/// One element of `metadata_extraction_paths`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataPath {
    pub key: String,
    pub path: String,
}

/// Why a `metadata_extraction_paths` value was rejected; `Display` is the user's message.
#[derive(Debug, PartialEq, Eq)]
pub struct PathsError(String);

impl fmt::Display for PathsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a `metadata_extraction_paths` value and returns its elements in order.
#[cfg(test)]
pub fn parse_paths(value: &Value) -> Result<Vec<MetadataPath>, PathsError> {
    parse_paths_checking(value, || {})
}

/// Checks a `metadata_extraction_paths` value and returns its elements in order, calling
/// `between` before each element (where a caller checks for interrupts).
pub fn parse_paths_checking(
    value: &Value,
    mut between: impl FnMut(),
) -> Result<Vec<MetadataPath>, PathsError> {
    let Value::Array(elements) = value else {
        return Err(PathsError(format!(
            "metadata_extraction_paths must be a JSON array, not {}",
            json_type_name(value)
        )));
    };
    if elements.len() > MAX_PATHS {
        return Err(PathsError(format!(
            "metadata_extraction_paths has {} elements; the limit is {MAX_PATHS}",
            elements.len()
        )));
    }
    let mut parsed: Vec<MetadataPath> = Vec::with_capacity(elements.len());
    // Element index of each key seen: duplicates are found in one pass.
    let mut first_of_key: HashMap<&str, usize> = HashMap::with_capacity(elements.len());
    for (index, element) in elements.iter().enumerate() {
        between();
        let fail = |reason: String| {
            PathsError(format!(
                "metadata_extraction_paths element {index} {}: {reason}",
                abbreviate(&element.to_string())
            ))
        };
        let Value::Object(members) = element else {
            return Err(fail(format!(
                "must be an object with \"key\" and \"path\", not {}",
                json_type_name(element)
            )));
        };
        let key = required_text(members.get("key"), "key").map_err(&fail)?;
        let key_chars = key.chars().count();
        if key_chars > MAX_KEY_CHARS {
            return Err(fail(format!(
                "key is {key_chars} characters long; the limit is {MAX_KEY_CHARS}"
            )));
        }
        if let Some(first) = first_of_key.insert(key, index) {
            return Err(fail(format!(
                "key \"{key}\" already appears in element {first}"
            )));
        }
        let path = required_text(members.get("path"), "path").map_err(&fail)?;
        if path.len() > MAX_PATH_BYTES {
            return Err(fail(format!(
                "path is {} bytes long; the limit is {MAX_PATH_BYTES}",
                path.len()
            )));
        }
        if let Err(why) = PathExpr::parse(path) {
            return Err(fail(format!(
                "path is not a valid JSONPath expression: {why}"
            )));
        }
        parsed.push(MetadataPath {
            key: key.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(parsed)
}

/// The elements of a value that was valid once, skipping anything malformed. For OLD rows of
/// `process_model`, which may predate validation (a restore with triggers disabled).
pub fn parse_paths_lenient(value: &Value) -> Vec<MetadataPath> {
    let Value::Array(elements) = value else {
        return Vec::new();
    };
    elements
        .iter()
        .filter_map(|e| {
            let key = e.get("key")?.as_str()?;
            let path = e.get("path")?.as_str()?;
            Some(MetadataPath {
                key: key.to_owned(),
                path: path.to_owned(),
            })
        })
        .collect()
}

fn required_text<'v>(member: Option<&'v Value>, name: &str) -> Result<&'v str, String> {
    match member {
        None => Err(format!("{name} is missing")),
        Some(Value::String(s)) if s.is_empty() => Err(format!("{name} is empty")),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!(
            "{name} must be a string, not {}",
            json_type_name(other)
        )),
    }
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Keeps error messages readable when an element is huge.
fn abbreviate(text: &str) -> String {
    const LIMIT: usize = 120;
    if text.chars().count() <= LIMIT {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(LIMIT).collect();
        cut.push_str("...");
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reject(value: Value) -> String {
        parse_paths(&value)
            .expect_err("must be rejected")
            .to_string()
    }

    #[test]
    fn accepts_valid_paths_in_order() {
        let paths = parse_paths(&json!([
            {"key": "invoice_number", "path": "invoice.number"},
            {"key": "first_approver", "path": "$.approvals[0].name"},
            {"key": "k", "path": "p", "comment": "extra members are ignored"}
        ]))
        .unwrap();
        let keys: Vec<_> = paths.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["invoice_number", "first_approver", "k"]);
        assert!(parse_paths(&json!([])).unwrap().is_empty());
        // 255 characters, some of them multi-byte, is still fine.
        let long_key = "é".repeat(255);
        assert_eq!(
            parse_paths(&json!([{"key": long_key, "path": "a"}]))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn rejects_each_malformed_shape_naming_the_element() {
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"key": "a", "path": "b"}),
                "must be a JSON array, not an object",
            ),
            (json!(null), "must be a JSON array, not null"),
            (json!("a.b"), "must be a JSON array, not a string"),
            (
                json!([["key", "path"]]),
                "element 0 [\"key\",\"path\"]: must be an object",
            ),
            (
                json!([{"key": "a", "path": "b"}, 7]),
                "element 1 7: must be an object",
            ),
            (
                json!([{"path": "b"}]),
                "element 0 {\"path\":\"b\"}: key is missing",
            ),
            (
                json!([{"key": "", "path": "b"}]),
                "element 0 {\"key\":\"\",\"path\":\"b\"}: key is empty",
            ),
            (
                json!([{"key": 5, "path": "b"}]),
                "key must be a string, not a number",
            ),
            (
                json!([{"key": null, "path": "b"}]),
                "key must be a string, not null",
            ),
            (
                json!([{"key": "a"}]),
                "element 0 {\"key\":\"a\"}: path is missing",
            ),
            (json!([{"key": "a", "path": ""}]), "path is empty"),
            (
                json!([{"key": "a", "path": ["b"]}]),
                "path must be a string, not an array",
            ),
            (
                json!([{"key": "a", "path": "x"}, {"key": "b", "path": "y"}, {"key": "a", "path": "z"}]),
                "element 2 {\"key\":\"a\",\"path\":\"z\"}: key \"a\" already appears in element 0",
            ),
            (
                json!([{"key": "a", "path": "$.a[?("}]),
                "path is not a valid JSONPath expression",
            ),
        ];
        for (value, expected) in cases {
            let message = reject(value.clone());
            assert!(
                message.contains(expected),
                "{value}: got {message:?}, want {expected:?}"
            );
        }
        let message = reject(json!([{"key": "k".repeat(256), "path": "a"}]));
        assert!(
            message.contains("key is 256 characters long; the limit is 255"),
            "{message}"
        );
        assert!(
            message.ends_with("the limit is 255") && message.contains("..."),
            "{message}"
        );
    }

    #[test]
    fn bounds_hold_and_the_longest_lists_and_paths_validate_quickly() {
        let many = |n: usize, path: &dyn Fn(usize) -> String| {
            Value::Array(
                (0..n)
                    .map(|i| json!({"key": format!("k{i}"), "path": path(i)}))
                    .collect(),
            )
        };
        let message = reject(many(MAX_PATHS + 1, &|i| format!("a.b{i}")));
        assert!(
            message.contains("has 1001 elements; the limit is 1000"),
            "{message}"
        );
        let started = std::time::Instant::now();
        // The most paths, every one a JSONPath; then nesting as deep as the length allows.
        assert_eq!(
            parse_paths(&many(MAX_PATHS, &|i| format!("$.a[?(@.b == {i})].c")))
                .unwrap()
                .len(),
            MAX_PATHS
        );
        let depth = (MAX_PATH_BYTES - 11) / 2;
        let nested = format!("$.a[?({}@.b{})]", "(".repeat(depth), ")".repeat(depth));
        assert!(nested.len() <= MAX_PATH_BYTES);
        let _ = parse_paths(&json!([{"key": "k", "path": nested}]));
        let brackets = format!("${}", "[0]".repeat((MAX_PATH_BYTES - 1) / 3));
        assert!(parse_paths(&json!([{"key": "k", "path": brackets}])).is_ok());
        assert!(
            started.elapsed().as_secs_f64() < 5.0,
            "{:?}",
            started.elapsed()
        );
        let message = reject(json!([{"key": "k", "path": format!("$.{}", "a".repeat(1023))}]));
        assert!(
            message.contains("path is 1025 bytes long; the limit is 1024"),
            "{message}"
        );
    }

    #[test]
    fn lenient_parse_skips_malformed_elements() {
        let paths = parse_paths_lenient(&json!([{"key": "a", "path": "x"}, 3, {"key": "b"}]));
        assert_eq!(
            paths,
            [MetadataPath {
                key: "a".into(),
                path: "x".into()
            }]
        );
        assert!(parse_paths_lenient(&json!({"a": 1})).is_empty());
    }

    #[test]
    fn dotted_paths_split_on_every_dot() {
        let PathExpr::Dotted(segments) = PathExpr::parse("a.b..c").unwrap() else {
            panic!()
        };
        assert_eq!(segments, ["a", "b", "", "c"]);
        assert!(matches!(
            PathExpr::parse("$.a.b").unwrap(),
            PathExpr::JsonPath(_)
        ));
    }
}
