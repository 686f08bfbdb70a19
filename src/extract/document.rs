//! Finding a path's value in task data held as a `serde_json::Value`. Pure, no PostgreSQL.
//!
//! The SQL functions navigate dotted paths on the jsonb itself (see `jsonb.rs`) and come here
//! only for JSONPath, which needs the whole document; the rule for dotted paths is defined here
//! once more so it can be tested without a server, and the SQL tests check both agree.

use crate::extract::paths::PathExpr;
use jsonpath_rust::query::js_path_process;
use serde_json::Value;

/// Documents nested at most this deep are searched on the backend's own stack.
const SHALLOW: usize = 100;
/// The stack a deeper document is searched (and dropped) on: JSONPath evaluation and
/// serde_json's drop recurse once per level, and Python reads documents thousands of levels
/// deep. Only the pages used are ever touched.
const DEEP_STACK_BYTES: usize = 256 << 20;

/// The first match of each JSONPath of `queries` in `document` (nested `depth` containers
/// deep), as values to render. A deep document is searched and dropped on a stack of its own.
pub fn jsonpath_values(
    document: Value,
    depth: usize,
    queries: &[&PathExpr],
) -> Vec<Option<crate::extract::value::Value>> {
    let search = move || {
        let values = queries
            .iter()
            .map(|query| extract(&document, query).map(crate::extract::value::Value::from_serde))
            .collect();
        drop(document);
        values
    };
    if depth <= SHALLOW {
        search()
    } else {
        stacker::grow(DEEP_STACK_BYTES, search)
    }
}

/// The value at `path`, or `None` when nothing is there. JSON `null` is returned as found;
/// rendering turns it into SQL NULL.
pub fn extract<'d>(doc: &'d Value, path: &PathExpr) -> Option<&'d Value> {
    match path {
        PathExpr::Dotted(segments) => {
            let mut current = doc;
            for segment in segments {
                // Objects only: an array on the way ends the search, even for "0".
                current = current.as_object()?.get(segment)?;
            }
            Some(current)
        }
        PathExpr::JsonPath(query) => {
            let matches = js_path_process(query, doc).ok()?;
            matches.into_iter().next().map(|found| found.val())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at<'d>(doc: &'d Value, path: &str) -> Option<&'d Value> {
        extract(doc, &PathExpr::parse(path).unwrap())
    }

    #[test]
    fn dotted_paths_descend_through_objects_only() {
        let doc = json!({
            "invoice": {"number": "INV-7", "lines": [{"sku": "A"}], "total": 12.5},
            "a": {"b": {"c": {"d": {"e": {"f": "deep"}}}}},
            "say \"hi\"": {"it's": 1},
            "dotted.key": "unreachable by a dotted path",
            "nothing": null,
            "0": "zero"
        });
        assert_eq!(at(&doc, "invoice.number"), Some(&json!("INV-7")));
        assert_eq!(at(&doc, "invoice.total"), Some(&json!(12.5)));
        assert_eq!(at(&doc, "invoice"), doc.get("invoice"));
        assert_eq!(at(&doc, "a.b.c.d.e.f"), Some(&json!("deep")));
        assert_eq!(at(&doc, "say \"hi\".it's"), Some(&json!(1)));
        assert_eq!(at(&doc, "0"), Some(&json!("zero")));
        assert_eq!(at(&doc, "nothing"), Some(&Value::Null));
        // Missing keys, arrays and scalars on the way give nothing.
        assert_eq!(at(&doc, "invoice.missing"), None);
        assert_eq!(at(&doc, "missing.number"), None);
        assert_eq!(at(&doc, "invoice.lines.0.sku"), None);
        assert_eq!(at(&doc, "invoice.number.length"), None);
        assert_eq!(at(&doc, "nothing.below"), None);
        assert_eq!(at(&doc, "dotted.key"), None);
        assert_eq!(at(&json!([{"a": 1}]), "0.a"), None);
        assert_eq!(at(&json!("scalar"), "a"), None);
    }

    #[test]
    fn jsonpath_takes_the_first_match() {
        let doc = json!({
            "approvals": [{"name": "ann", "ok": true}, {"name": "bob", "ok": false}],
            "lines": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 5}],
            "invoice": {"number": "INV-7"}
        });
        assert_eq!(at(&doc, "$.approvals[0].name"), Some(&json!("ann")));
        assert_eq!(at(&doc, "$.approvals[*].name"), Some(&json!("ann")));
        assert_eq!(at(&doc, "$.lines[?(@.qty > 2)].sku"), Some(&json!("B")));
        assert_eq!(at(&doc, "$..number"), Some(&json!("INV-7")));
        assert_eq!(at(&doc, "$.invoice"), doc.get("invoice"));
        assert_eq!(at(&doc, "$.approvals[5].name"), None);
        assert_eq!(at(&doc, "$.missing"), None);
    }
}
