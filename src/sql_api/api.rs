//! The SQL functions of schema `backfill` that users call.

use crate::batch::coverage;
use crate::batch::{self, latest_task_data_join, Batch, Begin, Runner};
use crate::extract::document::jsonpath_values;
use crate::extract::jsonb::{JsonTextArg, JsonbArg, JsonbResult, TooDeep};
use crate::extract::jsontext::{self, TextError, MAX_INT_DIGITS};
use crate::extract::paths::{MetadataPath, PathExpr};
use crate::extract::python::PythonVersion;
use crate::extract::render::{render, Style, Unstorable};
use crate::extract::value::Value as PyValue;
use crate::job::{self, store, JobPath, JobState, Origin};
use crate::pg::error::{self, invalid_parameter, report_with_hint, require_primary, required};
use crate::pg::privilege;
use crate::pg::query;
use crate::pg::settings;
use crate::pg::tables::{Table, Tables};
use crate::shmem;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// `{key: rendered value or null}` for each element of `paths`, read from `task_data`.
/// STABLE, not IMMUTABLE: the rendering follows backfill.value_format and
/// backfill.python_version, so the same arguments can give another result after a reload (an
/// index or a folded constant would keep the old).
#[pg_extern(stable, parallel_safe, strict)]
fn extract_metadata(task_data: JsonbArg, paths: JsonbArg) -> JsonB {
    let paths = job::valid_paths(&paths.to_serde_capped());
    let exprs: Vec<Rc<PathExpr>> = paths.iter().map(|path| compiled_path(&path.path)).collect();
    let texts: Vec<&str> = paths.iter().map(|path| path.path.as_str()).collect();
    let values = jsonb_values(&task_data, &exprs, &texts);
    let mut result = Map::with_capacity(paths.len());
    for (path, value) in paths.into_iter().zip(values) {
        result.insert(path.key, value.map_or(Value::Null, Value::String));
    }
    JsonB(Value::Object(result))
}

/// The text `process_instance_metadata.value` gets for a JSON value; NULL for JSON null.
#[pg_extern(stable, parallel_safe, strict)]
fn render_value(value: JsonbArg) -> Option<String> {
    stored(&value.to_value(), "the value", settings::style())
}

/// The data of the instance's latest completed task (latest by end_in_seconds, then guid; a
/// completed task without an end counts as earlier than any with one), `{}` when it has none
/// (or for NULL): what a job queued now by the caller would read for it, from the same tables
/// (the attached ones, or backfill's own), locked and checked first, with the same privileges
/// (`Tables::reader`: the caller's, or the tables' owner's, never a superuser's on tables
/// another role controls).
#[pg_extern(stable, parallel_unsafe)]
fn latest_task_data(process_instance_id: Option<i64>) -> JsonbResult {
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
    let exprs: Vec<Rc<PathExpr>> = paths.iter().map(|path| compiled_path(path)).collect();
    let texts: Vec<&str> = paths.iter().map(String::as_str).collect();
    jsonb_values(&task_data, &exprs, &texts)
}

/// The rendered values of `paths` in task data of type json, read from its text as Python's
/// `json.loads` reads it (see `jsontext`), never through jsonb: `1e+16`, `-0.0`, key order as
/// written, `\u0000`, lone surrogates, Python's limits. The batch engine calls this once per
/// instance on attached tables whose `data` is json.
#[pg_extern(stable, parallel_safe, strict, name = "extract_values")]
fn extract_values_from_text(task_data: JsonTextArg, paths: Vec<String>) -> Vec<Option<String>> {
    let exprs: Vec<Rc<PathExpr>> = paths.iter().map(|path| compiled_path(path)).collect();
    let refs: Vec<&PathExpr> = exprs.iter().map(|expr| &**expr).collect();
    let text = task_data.text().unwrap_or_else(|| {
        error::raise_plain(
            PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
            "task data is not UTF-8; backfill reads json text in a UTF-8 database only".to_owned(),
        )
    });
    let style = settings::style();
    let values = jsontext::values_at(text, &refs, style.python).unwrap_or_else(|e| {
        let python = style.python.name();
        match e {
            TextError::TooDeep { limit } => error::raise(
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "task data is nested more than {limit} levels deep, deeper than json.loads \
                     reads in Python {python} (RecursionError)"
                ),
                "SpiffWorkflow cannot read this instance's data either; it gets no rows.",
            ),
            TextError::IntTooLong { digits } => error::raise(
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "task data holds an integer of {digits} digits; json.loads reads at most \
                     {MAX_INT_DIGITS} (sys.get_int_max_str_digits, ValueError)"
                ),
                "SpiffWorkflow cannot read this instance's data either; it gets no rows.",
            ),
            TextError::Invalid { at, why } => error::raise_plain(
                PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
                format!(
                    "task data cannot be read as JSON: {} at byte {at}",
                    why.describe()
                ),
            ),
        }
    });
    values
        .iter()
        .zip(&paths)
        .map(|(value, path)| stored(value.as_ref()?, &format!("path \"{path}\""), style))
        .collect()
}

/// The rendered value of each of `exprs` (written `texts`) in a jsonb document.
fn jsonb_values(
    task_data: &JsonbArg,
    exprs: &[Rc<PathExpr>],
    texts: &[&str],
) -> Vec<Option<String>> {
    let style = settings::style();
    let mut values: Vec<Option<PyValue>> = exprs
        .iter()
        .map(|expr| match &**expr {
            PathExpr::Dotted(segments) => task_data.lookup_dotted(segments),
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
        // A document Python would not read is not searched either.
        let (document, depth) = task_data
            .to_serde_within(style.python.load_depth())
            .unwrap_or_else(|TooDeep { limit }| too_deep(limit, style.python));
        let only: Vec<&PathExpr> = queries.iter().map(|(_, expr)| *expr).collect();
        for ((i, _), value) in queries.iter().zip(jsonpath_values(document, depth, &only)) {
            values[*i] = value;
        }
    }
    values
        .iter()
        .zip(texts)
        .map(|(value, path)| stored(value.as_ref()?, &format!("path \"{path}\""), style))
        .collect()
}

/// The text stored for a value, or the instance's error when it has none (what `what` names
/// would fail SpiffWorkflow's own write too).
fn stored(value: &PyValue, what: &str, style: Style) -> Option<String> {
    render(value, style).unwrap_or_else(|unstorable| match unstorable {
        Unstorable::Nul => error::raise(
            PgSqlErrorCode::ERRCODE_UNTRANSLATABLE_CHARACTER,
            format!("the value of {what} contains \\u0000, which text cannot hold"),
            "The instance gets no row for this key; fix the task data or the path.",
        ),
        Unstorable::LoneSurrogate => error::raise(
            PgSqlErrorCode::ERRCODE_UNTRANSLATABLE_CHARACTER,
            format!(
                "the value of {what} is a string holding a lone surrogate (an unpaired \\ud800 to \\udfff escape), which UTF-8 text cannot hold"
            ),
            "SpiffWorkflow's own write of this value fails too; fix the task data or the path.",
        ),
        Unstorable::TooDeep { levels, limit } => error::raise(
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
fn too_deep(limit: usize, python: PythonVersion) -> ! {
    error::raise(
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

/// Queues a manual backfill of `keys` (NULL: all) of the model's current paths. With
/// `overwrite`, existing rows of those keys are replaced; otherwise only missing ones are
/// filled.
#[pg_extern(volatile)]
fn enqueue(
    process_model_identifier: Option<&str>,
    keys: default!(Option<Vec<Option<String>>>, "NULL"),
    overwrite: default!(Option<bool>, false),
    not_before: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> i64 {
    const ENQUEUE: &str = "backfill.enqueue";
    require_primary(ENQUEUE);
    let process_model_identifier = required(
        process_model_identifier,
        ENQUEUE,
        "process_model_identifier",
    );
    let overwrite = required(overwrite, ENQUEUE, "overwrite");
    // -infinity holds nothing back; infinity would hold the job for ever.
    let not_before = not_before.filter(|time| !time.is_neg_infinity());
    if not_before.is_some_and(|time| time.is_infinity()) {
        error::raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "backfill.enqueue: not_before must be a point in time, not infinity".to_owned(),
            "Pass NULL to let the job start at once, or a time; a job that is not to run is not queued (or is cancelled).",
        );
    }
    let keys: Option<Vec<String>> = keys.map(|keys| {
        keys.into_iter()
            .map(|key| required(key, ENQUEUE, "an element of keys"))
            .collect()
    });
    let paths = job::valid_paths(&job::paths_of_model(process_model_identifier));
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
    let job_id = job::insert_job(process_model_identifier, &chosen, Origin::Manual);
    let held = match not_before {
        Some(not_before) => {
            store::hold(job_id, not_before);
            format!("; no worker starts it before {not_before}")
        }
        None => String::new(),
    };
    notice!(
        "backfill job {job_id} queued for {process_model_identifier}: {}{held}",
        JobPath::describe(&chosen)
    );
    shmem::warn_if_no_worker(job_id);
    job_id
}

/// When backfill.active_hours next lets workers start batches: NULL while it does (or is
/// empty). The progress view shows it for the jobs it holds back.
#[pg_extern(stable)]
pub(crate) fn window_opens_at() -> Option<TimestampWithTimeZone> {
    let seconds = job::window_closed_for()?;
    // Windows open on the minute; the time of day was read to the second.
    query::optional_value::<TimestampWithTimeZone>(
        "SELECT date_trunc('minute', now() + make_interval(secs => $1) + interval '30 s')",
        &[f64::from(seconds).into()],
    )
}

/// Counts, exactly and now, the coverage of the current keys of `process_model_identifier`
/// (NULL: of every model with paths) with the caller's privileges, and records it for the
/// coverage view; the number of keys counted.
#[pg_extern(volatile)]
fn count_coverage(process_model_identifier: default!(Option<&str>, "NULL")) -> i64 {
    require_primary("backfill.count_coverage");
    let models = Spi::connect(|client| {
        client
            .select(
                "SELECT id, metadata_extraction_paths FROM backfill.process_model
                  WHERE $1::text IS NULL OR id = $1 ORDER BY id",
                None,
                &[process_model_identifier.into()],
            )?
            .map(|row| {
                Ok((
                    row.get::<String>(1)?.unwrap_or_default(),
                    row.get::<JsonB>(2)?.map(|j| j.0).unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("backfill: could not read the process models: {e}"));
    if let (Some(model), true) = (process_model_identifier, models.is_empty()) {
        invalid_parameter(&format!("process model \"{model}\" does not exist"));
    }
    // Counted with the privileges reading the tables has for the caller (its own, or their
    // owner's), and recorded as that role's count.
    let (tables, role) = Tables::current_for_caller(&[Table::Instances, Table::Metadata]);
    models
        .into_iter()
        .map(|(model, paths)| {
            let keys: Vec<String> = crate::extract::paths::parse_paths_lenient(&paths)
                .into_iter()
                .map(|p| p.key)
                .collect();
            if keys.is_empty() {
                return 0;
            }
            coverage::count_and_record(&model, &keys, &tables, role).len() as i64
        })
        .sum()
}

/// True when this database's configuration lets the worker run its jobs; otherwise a WARNING
/// says what to change. CREATE EXTENSION calls it.
#[pg_extern(volatile)]
fn check_worker() -> bool {
    match shmem::problem() {
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
    shmem::serving_pid()
}

/// Stops a queued or running job at its next batch boundary. False when it had already ended.
#[pg_extern(volatile)]
fn cancel(job_id: Option<i64>) -> bool {
    require_primary("backfill.cancel");
    job::cancel(required(job_id, "backfill.cancel", "job_id"))
}

/// Waits until the job is no longer queued or running and returns its state; after `timeout`
/// returns the state it is in then.
#[pg_extern(volatile)]
fn wait(job_id: Option<i64>, timeout: default!(Option<Interval>, "'60 s'")) -> String {
    let job_id = required(job_id, "backfill.wait", "job_id");
    let timeout = required(timeout, "backfill.wait", "timeout");
    // SAFETY: reading the isolation level of the current transaction.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        error::raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "backfill.wait needs READ COMMITTED: in this transaction's snapshot the job never changes".into(),
            "Call it outside an explicit REPEATABLE READ or SERIALIZABLE transaction.",
        );
    }
    let timeout = Duration::from_micros(timeout.as_micros().clamp(0, i64::MAX as i128) as u64);
    let deadline = Instant::now() + timeout;
    loop {
        let state = store::state_of(job_id).unwrap_or_else(|| job::no_such_job(job_id));
        if !state.is_unfinished() || Instant::now() >= deadline {
            return state.as_str().to_owned();
        }
        shmem::sleep(WAIT_POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

const WAIT_POLL: Duration = Duration::from_millis(50);

// CALL backfill.run is a PL/pgSQL loop over the three functions below, one transaction each:
// run_begin, then run_batch until it returns false, then run_end. Everything it decides is
// here, so the procedure (which cannot carry a search_path of its own: procedures with SET
// cannot COMMIT) calls only schema-qualified functions and compares nothing. A job a worker
// split into parts is run part after part: the session holds one part at a time.

thread_local! {
    /// The job this session ran a batch of last: the next batch of it pauses for batch_delay.
    static RAN_A_BATCH_OF: std::cell::Cell<Option<i64>> = const { std::cell::Cell::new(None) };
    /// The job this session runs (as named to run_begin) and the job row it holds: the same,
    /// or the part of it being run.
    static RUNNING: std::cell::Cell<Option<(i64, i64)>> = const { std::cell::Cell::new(None) };
}

/// The job row this session runs for `job_id`.
fn held_for(job_id: i64) -> i64 {
    match RUNNING.get() {
        Some((job, held)) if job == job_id => held,
        _ => job_id,
    }
}

/// First step of `CALL backfill.run`: takes the job (or the first part of it left) for this
/// session and marks it running. True when there are batches to run; otherwise a NOTICE says
/// why not.
#[pg_extern(volatile)]
fn run_begin(job_id: Option<i64>) -> bool {
    require_primary("backfill.run");
    let job_id = required(job_id, "backfill.run", "job_id");
    job::check_acts_for(job_id, "run");
    RAN_A_BATCH_OF.set(None);
    RUNNING.set(None);
    let parts = store::unfinished_parts(job_id);
    if parts.is_empty() {
        return begin_for_session(job_id, job_id, Say::WhyNot);
    }
    if begin_next_part(job_id, &parts) {
        return true;
    }
    notice!("backfill job {job_id}: no part of it is left to run");
    false
}

/// Takes the first of `parts` that can run; false when none can.
fn begin_next_part(job_id: i64, parts: &[i64]) -> bool {
    parts
        .iter()
        .any(|&part| begin_for_session(job_id, part, Say::Nothing))
}

/// Whether a session told there is nothing to run hears why.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Say {
    /// A NOTICE: the job it asked for is not runnable.
    WhyNot,
    /// Nothing: one of several parts was looked at.
    Nothing,
}

/// Takes `held` (the job, or a part of it) for this session; false, after a NOTICE when
/// `say` asks for one, when there is nothing to run.
fn begin_for_session(job_id: i64, held: i64, say: Say) -> bool {
    match batch::begin(held, Runner::SESSION) {
        Begin::Started => {
            RUNNING.set(Some((job_id, held)));
            true
        }
        Begin::NotRunnable(state) => {
            if say == Say::WhyNot {
                notice!("backfill job {held} is {state}: nothing to run");
            }
            false
        }
        Begin::Split(parts) => {
            if say == Say::WhyNot {
                notice!("backfill job {held} is split into {parts} parts: none is left to run");
            }
            false
        }
        // (A session's runner does not wait out locks: its lock_timeout is its caller's.)
        Begin::Blocked(why) => error::raise(
            PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
            format!("backfill job {held} could not start: {why}"),
            "Run it again once the lock is released.",
        ),
        Begin::Busy(pid) => {
            let who = pid.map_or("another session".to_owned(), |p| format!("process {p}"));
            let what = if held == job_id {
                format!("backfill job {job_id}")
            } else {
                format!("backfill job {held} (a part of job {job_id})")
            };
            error::raise(
                PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
                format!("{what} is being run by {who}"),
                format!(
                    "Wait for it with SELECT backfill.wait({job_id}), or stop it with SELECT backfill.cancel({job_id})."
                ),
            )
        }
    }
}

/// One batch of a job this session runs (see `run_begin`), in the caller's transaction, after
/// the backfill.batch_delay pause when it is not the first. True while there is more; a part
/// that succeeded is followed by the job's next part.
#[pg_extern(volatile)]
fn run_batch(job_id: Option<i64>) -> bool {
    require_primary("backfill.run");
    let job_id = required(job_id, "backfill.run", "job_id");
    if RAN_A_BATCH_OF.get() == Some(job_id) {
        shmem::sleep(settings::batch_delay());
    }
    RAN_A_BATCH_OF.set(Some(job_id));
    let held = held_for(job_id);
    match batch::run_batch(held, Runner::SESSION) {
        Batch::More => true,
        // A session waits for the job row; it is never skipped.
        Batch::Busy => true,
        Batch::Finished(JobState::Succeeded) if held != job_id => {
            batch::end(held);
            begin_next_part(job_id, &store::unfinished_parts(job_id))
        }
        Batch::Finished(_) => false,
        // Nothing was done: the next call tries the batch again.
        Batch::Blocked(_) => true,
    }
}

/// Last step of `CALL backfill.run`: lets other runners take the job and says how it ended.
#[pg_extern(volatile)]
fn run_end(job_id: Option<i64>) {
    require_primary("backfill.run");
    let job_id = required(job_id, "backfill.run", "job_id");
    // After run_begin found nothing to run, its NOTICE said so: no summary.
    let held = held_for(job_id);
    let ran = RUNNING.get().is_some_and(|(job, _)| job == job_id);
    batch::end(held);
    // After the procedure's COMMIT of the last batch.
    batch::count_due_coverage();
    RAN_A_BATCH_OF.set(None);
    RUNNING.set(None);
    if !ran {
        return;
    }
    if let Ok(Some(summary)) = store::summary(job_id) {
        notice!("backfill job {job_id} {summary}");
    }
}

/// From now on, jobs of this database read and write the tables of `schema_name` (an
/// application's own, such as SpiffWorkflow's in public) instead of the extension's. The
/// tables are checked first; the caller must own them. NOTICEs give the indexes the backfill's
/// lookups want when none serves them.
#[pg_extern(volatile)]
fn attach(schema_name: Option<&str>) {
    require_primary("backfill.attach");
    let name = required(schema_name, "backfill.attach", "schema_name");
    let c_name = std::ffi::CString::new(name).unwrap_or_default();
    // SAFETY: a catalog-cache lookup inside a transaction.
    let schema = unsafe { pg_sys::get_namespace_oid(c_name.as_ptr(), true) };
    if schema == pg_sys::Oid::INVALID {
        error::raise(
            PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME,
            format!("schema \"{name}\" does not exist"),
            "Name the schema that holds the application's process_instance, task, json_data and process_instance_metadata tables.",
        );
    }
    let tables = Tables::locked(schema, &Table::ALL).unwrap_or_else(|problem| problem.raise());
    if let Some(problem) = tables
        .owner_problem()
        .or_else(|| tables.conflict_target_problem())
    {
        problem.raise();
    }
    // Refused when no role could read them safely (a role that may replace them lacks their
    // owner's privileges).
    if let Err(problem) = tables.reader(privilege::current_role()) {
        problem.raise();
    }
    // Read before the switch: inside it the current role is the job table's owner.
    let attached_by = privilege::current_role();
    privilege::as_job_table_owner(|| {
        Spi::run_with_args(
            "SELECT backfill.attachment_set($1, $2)",
            &[schema.into(), attached_by.into()],
        )
    })
    .unwrap_or_else(|e| error!("backfill: could not record the attachment: {e}"));
    for statement in tables.index_advice() {
        report_with_hint(
            PgLogLevel::NOTICE,
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            format!(
                "no index of {} serves a lookup every batch makes",
                tables.schema_sql
            ),
            format!("Create it while the application runs: {statement}"),
        );
    }
    let unfinished = store::unfinished_elsewhere(schema);
    if unfinished > 0 {
        notice!(
            "backfill: {unfinished} queued or running job(s) keep the tables they were queued for; jobs queued from now on use schema {}",
            tables.schema_sql
        );
    }
}

/// Back to the extension's own tables in schema backfill, for jobs queued from now on.
/// Allowed to whoever attached the tables, their owner, or a superuser.
#[pg_extern(volatile)]
fn detach() {
    require_primary("backfill.detach");
    let attached = query::optional_value::<pg_sys::Oid>(
        "SELECT attached_by::oid FROM backfill.attachment",
        &[],
    );
    let Some(attached_by) = attached else {
        notice!("backfill: no tables are attached; jobs use those of schema backfill");
        return;
    };
    let owns_tables = query::optional_value::<pg_sys::Oid>(
        "SELECT schema_name::oid FROM backfill.attachment",
        &[],
    )
    .and_then(|schema| Tables::of_schema(schema).ok())
    .is_some_and(|tables| tables.owner_problem().is_none());
    if !privilege::acts_for(attached_by) && !owns_tables {
        error::raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "must be the role that attached the tables, their owner or a superuser to detach them"
                .to_owned(),
            format!(
                "They were attached by {}.",
                privilege::role_name(attached_by)
            ),
        );
    }
    privilege::as_job_table_owner(|| Spi::run("SELECT backfill.attachment_clear()"))
        .unwrap_or_else(|e| error!("backfill: could not remove the attachment: {e}"));
}
