//! The SQL functions of schema `backfill` that users call.

use crate::extract::extract;
use crate::jsonb::JsonbArg;
use crate::paths::{parse_paths, PathExpr};
use crate::render::render;
use crate::settings;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// `{key: rendered value or null}` for each element of `paths`, read from `task_data`.
#[pg_extern(immutable, parallel_safe, strict)]
fn extract_metadata(task_data: JsonbArg, paths: JsonB) -> JsonB {
    let paths = parse_paths(&paths.0).unwrap_or_else(|e| invalid_parameter(&e.to_string()));
    let mut document: Option<Value> = None;
    let mut result = Map::with_capacity(paths.len());
    for path in paths {
        let expr = compiled_path(&path.path);
        let value = value_at(&task_data, &expr, &mut document);
        result.insert(path.key, value.map_or(Value::Null, Value::String));
    }
    JsonB(Value::Object(result))
}

/// The text `process_instance_metadata.value` gets for a JSON value; NULL for JSON null.
#[pg_extern(immutable, parallel_safe, strict)]
fn render_value(value: JsonbArg) -> Option<String> {
    render(&value.to_value(), settings::value_format())
}

/// The rendered values of `paths` (plain path strings, not the jsonb array) in `task_data`, in
/// the order given. The batch engine calls this once per instance.
#[pg_extern(stable, parallel_safe, strict)]
fn extract_values(task_data: JsonbArg, paths: Vec<String>) -> Vec<Option<String>> {
    let mut document: Option<Value> = None;
    paths
        .iter()
        .map(|path| value_at(&task_data, &compiled_path(path), &mut document))
        .collect()
}

/// One path's rendered value. `document` caches the whole document once a JSONPath needs it.
fn value_at(task_data: &JsonbArg, expr: &PathExpr, document: &mut Option<Value>) -> Option<String> {
    let format = settings::value_format();
    match expr {
        PathExpr::Dotted(segments) => render(&task_data.lookup_dotted(segments)?, format),
        PathExpr::JsonPath(_) => {
            let document = document.get_or_insert_with(|| task_data.to_value());
            render(extract(document, expr)?, format)
        }
    }
}

thread_local! {
    /// Parsed paths by their text: JSONPath parsing costs far more than a lookup, and a batch
    /// asks for the same few paths once per instance.
    static PATH_CACHE: RefCell<HashMap<String, Rc<PathExpr>>> = RefCell::new(HashMap::new());
}

fn compiled_path(path: &str) -> Rc<PathExpr> {
    const CACHE_LIMIT: usize = 1024;
    PATH_CACHE.with_borrow_mut(|cache| {
        if let Some(expr) = cache.get(path) {
            return Rc::clone(expr);
        }
        let expr = match PathExpr::parse(path) {
            Ok(expr) => Rc::new(expr),
            Err(why) => invalid_parameter(&format!(
                "path \"{path}\" is not a valid JSONPath expression: {why}"
            )),
        };
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(path.to_owned(), Rc::clone(&expr));
        expr
    })
}

/// Raises ERROR 22023 (invalid_parameter_value): the user's input is wrong.
pub fn invalid_parameter(message: &str) -> ! {
    ereport!(
        PgLogLevel::ERROR,
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message
    );
    unreachable!("ereport(ERROR) does not return")
}
