//! Finding paths' values in task data held as `json` text (SpiffWorkflow's `json_data.data`),
//! read the way Python's `json.loads` reads it: numbers as written (so `1e+16` stays a float
//! and `100000000000000000000` an exact integer), object members in the order written (the
//! last of duplicate keys wins, in the place of the first), `\u0000` accepted. Pure, no
//! PostgreSQL.
//!
//! Dotted paths never build the document: one pass over the text descends only into the
//! members the paths name, skips everything else without allocating (serde_json's skipping is
//! iterative, so any depth is fine), and keeps the wanted values as slices of the text; only
//! those are parsed. A JSONPath needs the whole document, which is then parsed once.

use crate::extract::extract;
use crate::paths::PathExpr;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use std::cell::RefCell;
use std::fmt;

/// Why a document could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum TextError {
    /// Not JSON serde_json accepts (PostgreSQL's json type lets through a lone surrogate
    /// escape, which no string can hold).
    Invalid(String),
    /// A value to build is nested deeper than serde_json builds (128 levels).
    TooDeep,
}

impl From<serde_json::Error> for TextError {
    fn from(e: serde_json::Error) -> TextError {
        if e.to_string().starts_with("recursion limit exceeded") {
            TextError::TooDeep
        } else {
            TextError::Invalid(e.to_string())
        }
    }
}

/// The value at each path in `text`, in order; `None` where nothing is there (JSON `null` is
/// returned as found).
pub fn values_at(text: &str, paths: &[&PathExpr]) -> Result<Vec<Option<Value>>, TextError> {
    if paths.iter().any(|p| matches!(p, PathExpr::JsonPath(_))) {
        let document: Value = serde_json::from_str(text)?;
        return Ok(paths
            .iter()
            .map(|path| extract(&document, path).cloned())
            .collect());
    }
    let mut root = Node::default();
    for (i, path) in paths.iter().enumerate() {
        if let PathExpr::Dotted(segments) = path {
            root.add(segments, i);
        }
    }
    let found = RefCell::new(vec![None; paths.len()]);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    Seek {
        node: &root,
        found: &found,
    }
    .deserialize(&mut deserializer)?;
    deserializer.end()?;
    found
        .into_inner()
        .into_iter()
        .map(|raw: Option<&RawValue>| {
            raw.map(|raw| serde_json::from_str(raw.get()))
                .transpose()
                .map_err(TextError::from)
        })
        .collect()
}

/// The paths as a tree of object member names: a node's `ends` are the paths that stop there.
#[derive(Default)]
struct Node {
    key: String,
    children: Vec<Node>,
    ends: Vec<usize>,
}

impl Node {
    fn add(&mut self, segments: &[String], path: usize) {
        let Some((first, rest)) = segments.split_first() else {
            self.ends.push(path);
            return;
        };
        let child = match self.children.iter().position(|c| &c.key == first) {
            Some(at) => &mut self.children[at],
            None => {
                self.children.push(Node {
                    key: first.clone(),
                    ..Node::default()
                });
                self.children.last_mut().expect("just pushed")
            }
        };
        child.add(rest, path);
    }

    /// Forgets what this subtree found: a later duplicate of its key replaces the earlier.
    fn clear(&self, found: &mut [Option<&RawValue>]) {
        for &end in &self.ends {
            found[end] = None;
        }
        for child in &self.children {
            child.clear(found);
        }
    }
}

/// Reads one value at `node`: kept whole for the paths ending here, searched for the deeper
/// ones when it is an object, skipped otherwise.
struct Seek<'n, 'de> {
    node: &'n Node,
    found: &'n RefCell<Vec<Option<&'de RawValue>>>,
}

impl<'de> DeserializeSeed<'de> for Seek<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if self.node.ends.is_empty() {
            return deserializer.deserialize_any(self);
        }
        let raw: &'de RawValue = de::Deserialize::deserialize(deserializer)?;
        {
            let mut found = self.found.borrow_mut();
            for &end in &self.node.ends {
                found[end] = Some(raw);
            }
        }
        if !self.node.children.is_empty() {
            // Both `a` and `a.b` are wanted: search the slice kept for `a` once more.
            let mut inner = serde_json::Deserializer::from_str(raw.get());
            let children = Seek {
                node: self.node,
                found: self.found,
            };
            inner.deserialize_any(children).map_err(de::Error::custom)?;
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for Seek<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(child) = map.next_key_seed(ChildKey(&self.node.children))? {
            match child {
                Some(child) => {
                    child.clear(&mut self.found.borrow_mut());
                    map.next_value_seed(Seek {
                        node: child,
                        found: self.found,
                    })?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    // Anything but an object has no members: nothing below it is found.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// An object member's name, matched against the children without being copied.
struct ChildKey<'n>(&'n [Node]);

impl<'de, 'n> DeserializeSeed<'de> for ChildKey<'n> {
    type Value = Option<&'n Node>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, 'n> Visitor<'de> for ChildKey<'n> {
    type Value = Option<&'n Node>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object member name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().find(|child| child.key == key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{render, ValueFormat};

    fn rendered(text: &str, paths: &[&str]) -> Vec<Option<String>> {
        let exprs: Vec<PathExpr> = paths.iter().map(|p| PathExpr::parse(p).unwrap()).collect();
        let refs: Vec<&PathExpr> = exprs.iter().collect();
        values_at(text, &refs)
            .unwrap()
            .into_iter()
            .map(|v| v.and_then(|v| render(&v, ValueFormat::Python)))
            .collect()
    }

    fn one(text: &str, path: &str) -> Option<String> {
        rendered(text, &[path]).pop().unwrap()
    }

    #[test]
    fn numbers_render_as_python_reads_them_from_the_text() {
        let doc = r#"{"a": 1e+16, "b": -0.0, "c": 2.5e-300, "d": 0.30000000000000004,
                      "e": 100000000000000000000, "f": 1.0, "g": 1.5e-07, "h": -0, "i": 1E5,
                      "j": 1e400, "k": 12.50}"#;
        let got = rendered(
            doc,
            &["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"],
        );
        let want = [
            "1e+16",
            "-0.0",
            "2.5e-300",
            "0.30000000000000004",
            "100000000000000000000",
            "1.0",
            "1.5e-07",
            "0",
            "100000.0",
            "inf",
            "12.5",
        ];
        assert_eq!(got, want.map(|s| Some(s.to_owned())));
    }

    #[test]
    fn objects_keep_the_order_written_and_the_last_duplicate() {
        let doc = r#"{"o": {"z": 1, "a": [true, null, "it's"], "m": {"\u00e9": 1.0}},
                      "dup": {"x": 1}, "other": 0, "dup": {"y": 2}}"#;
        assert_eq!(
            one(doc, "o").as_deref(),
            Some(r#"{'z': 1, 'a': [True, None, "it's"], 'm': {'é': 1.0}}"#)
        );
        assert_eq!(one(doc, "dup").as_deref(), Some("{'y': 2}"));
        assert_eq!(one(doc, "dup.x"), None);
        assert_eq!(one(doc, "dup.y").as_deref(), Some("2"));
        // Python keeps the first place of a repeated key with the last value.
        assert_eq!(
            one(r#"{"v": {"a": 1, "b": 2, "a": 3}}"#, "v").as_deref(),
            Some("{'a': 3, 'b': 2}")
        );
    }

    #[test]
    fn nul_and_escapes_are_read() {
        let doc = r#"{"s": "a\u0000b", "l": ["a\u0000b"], "t": "tab\there", "k\u002ey": 1}"#;
        assert_eq!(one(doc, "s").as_deref(), Some("a\0b"));
        assert_eq!(one(doc, "l").as_deref(), Some(r"['a\x00b']"));
        assert_eq!(one(doc, "t").as_deref(), Some("tab\there"));
        assert_eq!(one(r#"{"k\u0065y": 7}"#, "key").as_deref(), Some("7"));
    }

    #[test]
    fn dotted_paths_descend_through_objects_only() {
        let doc = r#"{"invoice": {"number": "INV-7", "lines": [{"sku": "A"}]}, "n": null,
                      "s": "text", "0": "zero"}"#;
        let got = rendered(
            doc,
            &[
                "invoice.number",
                "invoice.lines.0.sku",
                "invoice",
                "n",
                "n.x",
                "s.x",
                "missing",
                "0",
            ],
        );
        assert_eq!(
            got,
            vec![
                Some("INV-7".into()),
                None,
                Some("{'number': 'INV-7', 'lines': [{'sku': 'A'}]}".into()),
                None,
                None,
                None,
                None,
                Some("zero".into())
            ]
        );
        // A JSON null is found (and renders as nothing); a missing key is not found.
        let values = values_at(doc, &[&PathExpr::parse("n").unwrap()]).unwrap();
        assert_eq!(values, vec![Some(Value::Null)]);
        assert_eq!(rendered("[1, 2]", &["a"]), vec![None]);
        assert_eq!(rendered("\"scalar\"", &["a"]), vec![None]);
    }

    #[test]
    fn jsonpath_reads_the_whole_document() {
        let doc = r#"{"lines": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2.50}], "x": 1e+16}"#;
        assert_eq!(
            rendered(doc, &["$.lines[?(@.qty > 2)].qty", "x", "$.lines[0]"]),
            vec![
                Some("2.5".into()),
                Some("1e+16".into()),
                Some("{'sku': 'A', 'qty': 1}".into())
            ]
        );
    }

    #[test]
    fn depth_is_no_obstacle_to_finding_a_value() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let doc = format!(r#"{{"skip": {deep}, "a": {{"b": "found"}}, "deep": {deep}}}"#);
        assert_eq!(one(&doc, "a.b").as_deref(), Some("found"));
        let paths = [&PathExpr::parse("deep").unwrap()];
        assert_eq!(values_at(&doc, &paths), Err(TextError::TooDeep));
        assert!(matches!(
            values_at("{\"a\": 1", &paths),
            Err(TextError::Invalid(_))
        ));
    }

    #[test]
    fn one_pass_serves_overlapping_paths() {
        let doc = r#"{"a": {"b": {"c": 1}, "d": 2}, "e": 3}"#;
        assert_eq!(
            rendered(doc, &["a.b.c", "a", "a.d", "e", "a.b"]),
            vec![
                Some("1".into()),
                Some("{'b': {'c': 1}, 'd': 2}".into()),
                Some("2".into()),
                Some("3".into()),
                Some("{'c': 1}".into())
            ]
        );
    }
}
