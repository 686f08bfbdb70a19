//! The SQL functions of schema `backfill` that users call.

use crate::engine::{self, Batch, Begin};
use crate::extract::extract;
use crate::jsonb::JsonbArg;
use crate::paths::{parse_paths, MetadataPath, PathExpr};
use crate::query;
use crate::queue::{self, JobPath, Origin};
use crate::render::render;
use crate::settings;
use crate::worker;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

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

/// Reports a message with a hint (what to do about it) at `level`; ERROR does not return.
pub fn report_with_hint(level: PgLogLevel, code: PgSqlErrorCode, message: String, hint: String) {
    pgrx::pg_sys::panic::ErrorReport::new(code, message, "backfill")
        .set_hint(hint)
        .report(level);
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

/// Queues a manual backfill of `keys` (NULL: all) of the model's current paths. With
/// `overwrite`, existing rows of those keys are replaced; otherwise only missing ones are
/// filled.
#[pg_extern(volatile)]
fn enqueue(
    process_model_identifier: &str,
    keys: default!(Option<Vec<String>>, "NULL"),
    overwrite: default!(bool, false),
) -> i64 {
    let paths = query::optional_value::<JsonB>(
        "SELECT metadata_extraction_paths FROM backfill.process_model WHERE id = $1",
        &[process_model_identifier.into()],
    )
    .unwrap_or_else(|| {
        invalid_parameter(&format!(
            "process model \"{process_model_identifier}\" does not exist"
        ))
    });
    let paths = parse_paths(&paths.0).unwrap_or_else(|e| invalid_parameter(&e.to_string()));
    let chosen: Vec<&MetadataPath> = match keys {
        None => paths.iter().collect(),
        Some(keys) => {
            let mut chosen: Vec<&MetadataPath> = Vec::new();
            for key in keys {
                let Some(p) = paths.iter().find(|p| p.key == key) else {
                    let known: Vec<&str> = paths.iter().map(|p| p.key.as_str()).collect();
                    invalid_parameter(&format!(
                        "process model \"{process_model_identifier}\" has no metadata extraction path with key \"{key}\" \
                         (its keys: {})",
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    ));
                };
                if !chosen.iter().any(|c| c.key == key) {
                    chosen.push(p);
                }
            }
            chosen
        }
    };
    let chosen: Vec<JobPath> = chosen
        .into_iter()
        .map(|p| JobPath::new(p, overwrite))
        .collect();
    if chosen.is_empty() {
        invalid_parameter(&format!(
            "process model \"{process_model_identifier}\" has no metadata extraction paths to backfill"
        ));
    }
    let job_id = queue::insert_job(process_model_identifier, &chosen, Origin::Manual);
    notice!(
        "backfill job {job_id} queued for {process_model_identifier}: {}",
        JobPath::describe(&chosen)
    );
    warn_if_no_worker(job_id);
    job_id
}

/// Warns when no worker will pick up the job just queued.
pub fn warn_if_no_worker(job_id: i64) {
    if let Some((message, hint)) = worker::problem(true) {
        report_with_hint(
            PgLogLevel::WARNING,
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("backfill job {job_id} will wait: {message}"),
            hint,
        );
    }
}

/// True when this database's configuration lets the worker run its jobs; otherwise a WARNING
/// says what to change. CREATE EXTENSION calls it.
#[pg_extern(volatile)]
fn check_worker() -> bool {
    match worker::problem(false) {
        None => true,
        Some((message, hint)) => {
            report_with_hint(
                PgLogLevel::WARNING,
                PgSqlErrorCode::ERRCODE_WARNING,
                message,
                hint,
            );
            false
        }
    }
}

/// The pid of the worker serving this database, NULL when none is running.
#[pg_extern(volatile)]
fn worker_pid() -> Option<i32> {
    worker::serving_pid()
}

/// Stops a queued or running job at its next batch boundary. False when it had already ended.
#[pg_extern(volatile)]
fn cancel(job_id: i64) -> bool {
    queue::cancel(job_id)
}

/// Waits until the job is no longer queued or running and returns its state; after `timeout`
/// returns the state it is in then.
#[pg_extern(volatile)]
fn wait(job_id: i64, timeout: default!(Interval, "'60 s'")) -> String {
    // SAFETY: reading the isolation level of the current transaction.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "backfill.wait needs READ COMMITTED: in this transaction's snapshot the job never changes"
        );
    }
    let timeout = Duration::from_micros(timeout.as_micros().clamp(0, i64::MAX as i128) as u64);
    let deadline = Instant::now() + timeout;
    loop {
        let state = queue::state_of(job_id).unwrap_or_else(|| queue::no_such_job(job_id));
        if (state != "queued" && state != "running") || Instant::now() >= deadline {
            return state;
        }
        worker::sleep(WAIT_POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

const WAIT_POLL: Duration = Duration::from_millis(50);

/// First step of `CALL backfill.run`: takes the job for this session and marks it running.
/// Returns 'running', or the state of a job that has nothing to run.
#[pg_extern(volatile)]
fn run_begin(job_id: i64) -> String {
    match engine::begin(job_id, true) {
        Begin::Started => "running".to_owned(),
        Begin::NotRunnable(state) => state,
        Begin::Busy(pid) => {
            let who = pid.map_or("another session".to_owned(), |p| format!("process {p}"));
            report_with_hint(
                PgLogLevel::ERROR,
                PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
                format!("backfill job {job_id} is being run by {who}"),
                format!(
                    "Wait for it with SELECT backfill.wait({job_id}), or stop it with SELECT backfill.cancel({job_id}). \
                     A session whose CALL backfill.run was interrupted keeps the job until it ends or runs it again."
                ),
            );
            unreachable!("ERROR does not return")
        }
    }
}

/// One batch of a job this session runs (see `run_begin`), in the caller's transaction.
/// Returns 'running' while there is more, else the job's final state.
#[pg_extern(volatile)]
fn run_batch(job_id: i64) -> String {
    match engine::run_batch(job_id) {
        Batch::More => "running".to_owned(),
        Batch::Finished(state) => state,
    }
}

/// Last step of `CALL backfill.run`: lets other runners take the job.
#[pg_extern(volatile)]
fn run_end(job_id: i64) {
    engine::end(job_id)
}
