//! Triggers on `backfill.process_model` and `backfill.job`.

use super::catch_up;
use crate::extract::jsonb::JsonbArg;
use crate::extract::paths::parse_paths_lenient;
use crate::job::{self, JobPath, Origin};
use crate::pg::settings;
use crate::shmem;
use pgrx::prelude::*;
use serde_json::Value;
use std::fmt;

#[derive(Debug)]
pub enum TriggerError {
    NoRow(&'static str),
    Column(String),
}

impl fmt::Display for TriggerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TriggerError::NoRow(which) => write!(f, "backfill trigger fired without a {which} row"),
            TriggerError::Column(why) => {
                write!(f, "backfill trigger could not read a column: {why}")
            }
        }
    }
}

const PATHS_COLUMN: &str = "metadata_extraction_paths";

/// The paths column, read in place: however deep a value someone stored, converting it is
/// bounded (see JsonbArg::to_serde_capped).
fn paths_of(row: &PgHeapTuple<'_, AllocatedByPostgres>) -> Result<Option<Value>, TriggerError> {
    row.get_by_name::<JsonbArg>(PATHS_COLUMN)
        .map(|paths| paths.map(|p| p.to_serde_capped()))
        .map_err(|e| TriggerError::Column(e.to_string()))
}

fn model_of(row: &PgHeapTuple<'_, AllocatedByPostgres>) -> Result<String, TriggerError> {
    row.get_by_name("id")
        .map_err(|e| TriggerError::Column(e.to_string()))?
        .ok_or(TriggerError::NoRow("model id"))
}

/// BEFORE INSERT OR UPDATE: rejects a malformed `metadata_extraction_paths` with 22023, so
/// the row stays as it was and nothing is enqueued.
#[pg_trigger]
fn validate_metadata_extraction_paths<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, TriggerError> {
    let new = trigger.new().ok_or(TriggerError::NoRow("NEW"))?;
    // NULL is left to the NOT NULL constraint, which reports it in its own words.
    if let Some(paths) = paths_of(&new)? {
        job::valid_paths(&paths);
    }
    Ok(Some(new))
}

/// AFTER UPDATE (when the paths changed): queues one job with every key the update added
/// (fill where missing) or re-pointed (overwrite), in the updating transaction.
#[pg_trigger]
fn enqueue_backfill_on_model_update<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, TriggerError> {
    let old = trigger.old().ok_or(TriggerError::NoRow("OLD"))?;
    let new = trigger.new().ok_or(TriggerError::NoRow("NEW"))?;
    let model = model_of(&new)?;
    let old_paths = paths_of(&old)?
        .map(|paths| parse_paths_lenient(&paths))
        .unwrap_or_default();
    let new_paths = paths_of(&new)?
        .map(|paths| job::valid_paths(&paths))
        .unwrap_or_default();
    let changes = JobPath::changes(&old_paths, &new_paths);
    if changes.is_empty() {
        return Ok(None);
    }
    let keys = JobPath::describe(&changes);
    if !settings::enabled() {
        notice!(
            "backfill.enabled is off: no backfill job queued for {model} (keys {keys}); \
             SELECT backfill.enqueue('{model}') queues one later"
        );
        return Ok(None);
    }
    job::queue_job(&model, &changes, Origin::ModelUpdate, "");
    Ok(None)
}

/// AFTER INSERT (with paths): a model that arrives with paths while it has instances (a first
/// sync on an existing deployment) gets a catch-up job for its instances, in the inserting
/// transaction.
#[pg_trigger]
fn enqueue_catch_up_on_model_insert<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, TriggerError> {
    let new = trigger.new().ok_or(TriggerError::NoRow("NEW"))?;
    let model = model_of(&new)?;
    let paths = paths_of(&new)?
        .map(|paths| job::valid_paths(&paths))
        .unwrap_or_default();
    // A dump being restored (pg_restore, or psql with a plain dump) brings its jobs and
    // metadata rows with it, and a job queued now would take an id the restore's own job rows
    // are about to bring. Its rows come by COPY, or (pg_dump --inserts) by INSERTs after the
    // script turned check_function_bodies off, as every dump's script does first.
    if paths.is_empty() || loading_by_copy() || !checking_function_bodies() {
        return Ok(None);
    }
    if !settings::enabled() {
        notice!(
            "backfill.enabled is off: no catch-up job queued for {model}; \
             SELECT backfill.catch_up('{model}') queues one later"
        );
        return Ok(None);
    }
    catch_up::queue(&model, &paths, Origin::ModelUpdate);
    Ok(None)
}

fn checking_function_bodies() -> bool {
    // SAFETY: reading a setting of this backend.
    unsafe { pg_sys::check_function_bodies }
}

/// Whether the statement the client sent is a COPY (comments and blanks before it aside).
fn loading_by_copy() -> bool {
    // SAFETY: debug_query_string is NULL or the NUL-terminated text of the statement this
    // backend is executing for its client, alive while it runs.
    let statement = unsafe {
        let text = pg_sys::debug_query_string;
        if text.is_null() {
            return false;
        }
        std::ffi::CStr::from_ptr(text).to_string_lossy()
    };
    is_copy(&statement)
}

/// Whether `statement` is a COPY, after any blanks and comments.
fn is_copy(statement: &str) -> bool {
    let mut rest = statement;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, next)| next);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, next)| next);
        } else {
            break;
        }
    }
    rest.get(..4)
        .is_some_and(|word| word.eq_ignore_ascii_case("copy"))
        && !rest[4..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::is_copy;

    #[test]
    fn a_copy_is_told_from_other_statements() {
        assert!(is_copy("COPY backfill.process_model (id) FROM stdin;"));
        assert!(is_copy(
            "  -- models\n/* all */ copy process_model FROM '/x'"
        ));
        assert!(!is_copy(
            "INSERT INTO backfill.process_model VALUES ('copy')"
        ));
        assert!(!is_copy("SELECT * FROM backfill.sync_process_models('[]')"));
        assert!(!is_copy("copyright"));
        assert!(!is_copy(""));
        assert!(!is_copy("/* COPY"));
    }
}

/// AFTER INSERT on `backfill.job`, once a statement: whatever inserted job rows (a queued job,
/// a worker splitting one, pg_restore reloading a dump taken while a job ran), a worker is
/// asked for when the transaction commits, so that they run, or resume, without waiting for
/// anything else to ask.
#[pg_trigger]
fn wake_for_new_jobs<'a>(
    _trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, TriggerError> {
    shmem::wake_at_commit();
    Ok(None)
}
