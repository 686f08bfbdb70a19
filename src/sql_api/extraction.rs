//! The extraction functions: what a path gives in task data (jsonb or json text), rendered
//! as the job would store it, and an instance's latest task data.

use crate::batch::latest_task_data_join;
use crate::extract::document::jsonpath_values;
use crate::extract::jsonb::{JsonTextArg, JsonbArg, JsonbResult, TooDeep};
use crate::extract::jsontext::{self, TextError, MAX_INT_DIGITS};
use crate::extract::paths::PathExpr;
use crate::extract::python::PythonVersion;
use crate::extract::render::{render, Style, Unstorable};
use crate::extract::value::{room_for_whole, Value as PyValue};
use crate::job::{self};
use crate::pg::error::{self, invalid_parameter};
use crate::pg::privilege;
use crate::pg::settings;
use crate::pg::subxact::sqlstate_text;
use crate::pg::tables::{Table, Tables};
use crate::pg::version;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// `{key: rendered value or null}` for each element of `paths`, read from `task_data`.
/// STABLE, not IMMUTABLE: the rendering follows backfill.value_format and
/// backfill.python_version, so the same arguments can give another result after a reload (an
/// index or a folded constant would keep the old).
#[pg_extern(stable, parallel_safe, strict)]
fn extract_metadata(task_data: JsonbArg, paths: JsonbArg) -> JsonB {
    let paths = job::valid_paths(&paths.to_serde_capped());
    let exprs: Vec<Rc<PathExpr>> = paths.iter().map(|path| compiled_path(&path.path)).collect();
    let texts: Vec<&str> = paths.iter().map(|path| path.path.as_str()).collect();
    let values = jsonb_values(&task_data, &exprs, &texts).unwrap_or_else(|fault| fault.raise());
    let mut result = Map::with_capacity(paths.len());
    for (path, value) in paths.into_iter().zip(values) {
        result.insert(path.key, value.map_or(Value::Null, Value::String));
    }
    JsonB(Value::Object(result))
}

/// The text `process_instance_metadata.value` gets for a JSON value; NULL for JSON null.
#[pg_extern(stable, parallel_safe, strict)]
fn render_value(value: JsonbArg) -> Option<String> {
    stored(&value.to_value(), "the value", settings::style()).unwrap_or_else(|fault| fault.raise())
}

/// The data of the instance's latest completed task (latest by end_in_seconds, then guid; a
/// completed task without an end counts as earlier than any with one), `{}` when it has none
/// (or for NULL): what a job queued now by the caller would read for it, from the same tables
/// (the attached ones, or backfill's own), locked and checked first, with the same privileges
/// (`Tables::reader`: the caller's, or the tables' owner's, never a superuser's on tables
/// another role controls).
#[pg_extern(stable, parallel_unsafe)]
fn latest_task_data(process_instance_id: Option<i64>) -> JsonbResult {
    version::require_current_objects_once();
    let (tables, reader) = Tables::current_for_caller(&[Table::Tasks, Table::Data]);
    let sql = format!(
        "SELECT coalesce(d.data::jsonb, '{{}}') FROM (SELECT $1::bigint AS id) AS b {}",
        latest_task_data_join(&tables, "b.id")
    );
    privilege::as_role(reader, || {
        Spi::connect(|client| {
            client
                .select(&sql, Some(1), &[process_instance_id.into()])?
                .first()
                .get::<JsonbResult>(1)
        })
    })
    .unwrap_or_else(|e| error!("backfill: could not read the task data: {e}"))
    .unwrap_or_else(|| error!("backfill: no task data returned"))
}

/// The rendered values of `paths` (plain path strings, not the jsonb array) in `task_data`, in
/// the order given. The batch engine calls this once per instance.
#[pg_extern(stable, parallel_safe, strict)]
fn extract_values(task_data: JsonbArg, paths: Vec<String>) -> Vec<Option<String>> {
    jsonb_paths(&task_data, &paths).unwrap_or_else(|fault| fault.raise())
}

fn jsonb_paths(task_data: &JsonbArg, paths: &[String]) -> Result<Vec<Option<String>>, Fault> {
    let exprs: Vec<Rc<PathExpr>> = paths.iter().map(|path| compiled_path(path)).collect();
    let texts: Vec<&str> = paths.iter().map(String::as_str).collect();
    jsonb_values(task_data, &exprs, &texts)
}

/// `extract_values`, with one more element after the values: NULL, or the error of this
/// instance's data ("message (SQLSTATE)") instead of raising it, the values then all NULL. A
/// batch on Citus reads many instances' documents in one statement on the worker nodes, and
/// skips the instances whose data fails without redoing the others.
#[pg_extern(stable, parallel_safe, strict, name = "extract_values_or_fault")]
fn extract_values_or_fault_jsonb(task_data: JsonbArg, paths: Vec<String>) -> Vec<Option<String>> {
    with_fault(jsonb_paths(&task_data, &paths), paths.len())
}

/// `extract_values_or_fault` for task data of type json.
#[pg_extern(stable, parallel_safe, strict, name = "extract_values_or_fault")]
fn extract_values_or_fault_text(task_data: JsonTextArg, paths: Vec<String>) -> Vec<Option<String>> {
    with_fault(text_paths(&task_data, &paths), paths.len())
}

fn with_fault(values: Result<Vec<Option<String>>, Fault>, paths: usize) -> Vec<Option<String>> {
    match values {
        Ok(mut values) => {
            values.push(None);
            values
        }
        Err(fault) => {
            let mut values = vec![None; paths];
            values.push(Some(fault.to_string()));
            values
        }
    }
}

/// The rendered values of `paths` in task data of type json, read from its text as Python's
/// `json.loads` reads it (see `jsontext`), never through jsonb: `1e+16`, `-0.0`, key order as
/// written, `\u0000`, lone surrogates, Python's limits. The batch engine calls this once per
/// instance on attached tables whose `data` is json.
#[pg_extern(stable, parallel_safe, strict, name = "extract_values")]
fn extract_values_from_text(task_data: JsonTextArg, paths: Vec<String>) -> Vec<Option<String>> {
    text_paths(&task_data, &paths).unwrap_or_else(|fault| fault.raise())
}

fn text_paths(task_data: &JsonTextArg, paths: &[String]) -> Result<Vec<Option<String>>, Fault> {
    let exprs: Vec<Rc<PathExpr>> = paths.iter().map(|path| compiled_path(path)).collect();
    let refs: Vec<&PathExpr> = exprs.iter().map(|expr| &**expr).collect();
    let text = task_data.text().ok_or_else(|| Fault {
        code: PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
        message: "task data is not UTF-8; backfill reads json text in a UTF-8 database only"
            .to_owned(),
        hint: "",
    })?;
    let style = settings::style();
    let values = jsontext::values_at(text, &refs, style.python).map_err(|e| {
        let python = style.python.name();
        match e {
            TextError::TooDeep { limit } => Fault::new(
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "task data is nested more than {limit} levels deep, deeper than json.loads \
                     reads in Python {python} (RecursionError)"
                ),
                "SpiffWorkflow cannot read this instance's data either; it gets no rows.",
            ),
            TextError::IntTooLong { digits } => Fault::new(
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "task data holds an integer of {digits} digits; json.loads reads at most \
                     {MAX_INT_DIGITS} (sys.get_int_max_str_digits, ValueError)"
                ),
                "SpiffWorkflow cannot read this instance's data either; it gets no rows.",
            ),
            TextError::NoRoom { bytes } => no_room(bytes),
            TextError::Invalid { at, why } => Fault::new(
                PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
                format!(
                    "task data cannot be read as JSON: {} at byte {at}",
                    why.describe()
                ),
                "",
            ),
        }
    })?;
    values
        .iter()
        .zip(paths)
        .map(|(value, path)| match value {
            Some(value) => stored(value, &format!("path \"{path}\""), style),
            None => Ok(None),
        })
        .collect()
}

/// The rendered value of each of `exprs` (written `texts`) in a jsonb document.
pub(super) fn jsonb_values(
    task_data: &JsonbArg,
    exprs: &[Rc<PathExpr>],
    texts: &[&str],
) -> Result<Vec<Option<String>>, Fault> {
    let style = settings::style();
    let mut values: Vec<Option<PyValue>> = exprs
        .iter()
        .map(|expr| match &**expr {
            PathExpr::Dotted(segments) => {
                task_data.lookup_dotted(segments, style.python.str_depth())
            }
            PathExpr::JsonPath(_) => None,
        })
        .collect();
    let queries: Vec<(usize, &PathExpr)> = exprs
        .iter()
        .enumerate()
        .filter(|(_, expr)| matches!(&***expr, PathExpr::JsonPath(_)))
        .map(|(i, expr)| (i, &**expr))
        .collect();
    if !queries.is_empty() {
        room_for_whole(task_data.bytes()).map_err(no_room)?;
        // A document Python would not read is not searched either.
        let (document, depth) = task_data
            .to_serde_within(style.python.load_depth())
            .map_err(|TooDeep { limit }| too_deep(limit, style.python))?;
        let only: Vec<&PathExpr> = queries.iter().map(|(_, expr)| *expr).collect();
        for ((i, _), value) in queries.iter().zip(jsonpath_values(document, depth, &only)) {
            values[*i] = value;
        }
    }
    values
        .iter()
        .zip(texts)
        .map(|(value, path)| match value {
            Some(value) => stored(value, &format!("path \"{path}\""), style),
            None => Ok(None),
        })
        .collect()
}

/// A document too large to search with a JSONPath (or a value too deep to render) in the
/// memory this process may have: 53200, as PostgreSQL's own allocations fail.
fn no_room(bytes: usize) -> Fault {
    Fault::new(
        PgSqlErrorCode::ERRCODE_OUT_OF_MEMORY,
        format!(
            "out of memory: reading this task data whole (for a JSONPath, or a value nested \
             deeper than Python's str() goes) takes up to {} MB, which this process cannot have",
            bytes.div_ceil(1 << 20)
        ),
        "Dotted paths read any document in little memory; or raise the memory limit of the server's processes.",
    )
}

/// What an instance's data cannot give: the error a job counts for the instance and skips it.
pub(super) struct Fault {
    code: PgSqlErrorCode,
    message: String,
    /// Empty for none.
    hint: &'static str,
}

impl Fault {
    fn new(code: PgSqlErrorCode, message: String, hint: &'static str) -> Fault {
        Fault {
            code,
            message,
            hint,
        }
    }

    pub(super) fn raise(self) -> ! {
        if self.hint.is_empty() {
            error::raise_plain(self.code, self.message)
        } else {
            error::raise(self.code, self.message, self.hint)
        }
    }
}

/// "message (SQLSTATE)", as a job's last_error says an instance's error.
impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, sqlstate_text(self.code))
    }
}

/// The text stored for a value, or the instance's error when it has none (what `what` names
/// would fail SpiffWorkflow's own write too).
pub(super) fn stored(value: &PyValue, what: &str, style: Style) -> Result<Option<String>, Fault> {
    render(value, style).map_err(|unstorable| match unstorable {
        Unstorable::Nul => Fault::new(
            PgSqlErrorCode::ERRCODE_UNTRANSLATABLE_CHARACTER,
            format!("the value of {what} contains \\u0000, which text cannot hold"),
            "The instance gets no row for this key; fix the task data or the path.",
        ),
        Unstorable::LoneSurrogate => Fault::new(
            PgSqlErrorCode::ERRCODE_UNTRANSLATABLE_CHARACTER,
            format!(
                "the value of {what} is a string holding a lone surrogate (an unpaired \\ud800 to \\udfff escape), which UTF-8 text cannot hold"
            ),
            "SpiffWorkflow's own write of this value fails too; fix the task data or the path.",
        ),
        Unstorable::TooDeep { levels, limit } => Fault::new(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!(
                "the value of {what} is nested {levels} levels deep; str() in Python {} stops \
                 at {limit} (RecursionError)",
                style.python.name()
            ),
            "SpiffWorkflow's own backfill fails on this instance too.",
        ),
    })
}

/// A jsonb document JSONPath evaluation will not go into: an error of this instance's data,
/// which the batch engine counts and skips.
pub(super) fn too_deep(limit: usize, python: PythonVersion) -> Fault {
    Fault::new(
        PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        format!(
            "task data is nested more than {limit} levels deep, deeper than json.loads reads in \
             Python {}; JSONPath paths are not evaluated on it",
            python.name()
        ),
        "Dotted paths (a.b.c) work at any depth on jsonb task data.",
    )
}

thread_local! {
    /// Parsed paths by their text: JSONPath parsing costs far more than a lookup, and a batch
    /// asks for the same few paths once per instance.
    pub(super) static PATH_CACHE: RefCell<HashMap<String, Rc<PathExpr>>> = RefCell::new(HashMap::new());
}

pub(super) fn compiled_path(path: &str) -> Rc<PathExpr> {
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
