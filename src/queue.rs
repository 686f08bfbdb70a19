//! The job queue: `backfill.job` rows, who may run one, and the paths a job fills.

use crate::error::{invalid_parameter, raise, report_with_hint};
use crate::paths::{parse_paths_checking, MetadataPath};
use crate::privilege::{self, as_job_table_owner};
use crate::query::optional_value;
use crate::subxact::in_subtransaction;
use crate::tables::{self, Tables};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};
use std::cell::Cell;

/// One path a job fills, and whether it replaces rows that already exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobPath {
    pub key: String,
    pub path: String,
    pub overwrite: bool,
}

impl JobPath {
    /// `path` as filled by a job, replacing existing rows or not.
    pub fn new(path: &MetadataPath, overwrite: bool) -> JobPath {
        JobPath {
            key: path.key.clone(),
            path: path.path.clone(),
            overwrite,
        }
    }

    pub fn to_json(paths: &[JobPath]) -> Value {
        Value::Array(
            paths
                .iter()
                .map(|p| json!({"key": p.key, "path": p.path, "overwrite": p.overwrite}))
                .collect(),
        )
    }

    /// Reads `job.paths`; written by this extension, so anything else is corruption.
    pub fn from_json(value: &Value) -> Vec<JobPath> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| JobPath {
                key: p["key"].as_str().unwrap_or_default().to_owned(),
                path: p["path"].as_str().unwrap_or_default().to_owned(),
                overwrite: p["overwrite"].as_bool().unwrap_or(false),
            })
            .collect()
    }

    /// What a change of `metadata_extraction_paths` from `old` to `new` asks for: keys that are
    /// new are filled where missing; keys whose path changed are filled with overwrite (their
    /// values came from the old path); removed or unchanged keys need nothing.
    pub fn changes(old: &[MetadataPath], new: &[MetadataPath]) -> Vec<JobPath> {
        new.iter()
            .filter_map(|n| {
                let overwrite = match old.iter().find(|o| o.key == n.key) {
                    None => false,
                    Some(o) if o.path != n.path => true,
                    Some(_) => return None,
                };
                Some(JobPath::new(n, overwrite))
            })
            .collect()
    }

    /// "invoice_number, customer_id (overwrite)" for log lines and notices.
    pub fn describe(paths: &[JobPath]) -> String {
        paths
            .iter()
            .map(|p| {
                if p.overwrite {
                    format!("{} (overwrite)", p.key)
                } else {
                    p.key.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    ModelUpdate,
    Manual,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::ModelUpdate => "model_update",
            Origin::Manual => "manual",
        }
    }
}

/// The elements of a `metadata_extraction_paths` value, or ERROR 22023 naming what is wrong.
/// Validation is linear and bounded (MAX_PATHS, MAX_PATH_BYTES) and checks for interrupts.
pub fn valid_paths(value: &Value) -> Vec<MetadataPath> {
    parse_paths_checking(value, || {
        pgrx::check_for_interrupts!();
    })
    .unwrap_or_else(|e| invalid_parameter(&e.to_string()))
}

/// The metadata_extraction_paths of `model` as stored (unvalidated), or ERROR 22023 when
/// there is no such model.
pub fn paths_of_model(model: &str) -> Value {
    crate::query::optional_jsonb(
        "SELECT metadata_extraction_paths FROM backfill.process_model WHERE id = $1",
        &[model.into()],
    )
    .unwrap_or_else(|| invalid_parameter(&format!("process model \"{model}\" does not exist")))
}

/// Inserts a queued job in the current transaction and returns its id. The job will run with
/// the privileges of the current role, which is recorded with it.
pub fn insert_job(model: &str, paths: &[JobPath], origin: Origin) -> i64 {
    let overwrite = paths.iter().any(|p| p.overwrite);
    let role = privilege::current_role();
    let id = as_job_table_owner(|| {
        Spi::get_one_with_args::<i64>(
            "SELECT backfill.job_insert($1, $2, $3, $4, $5)",
            &[
                model.into(),
                JsonB(JobPath::to_json(paths)).into(),
                overwrite.into(),
                origin.as_str().into(),
                role.into(),
            ],
        )
    })
    .unwrap_or_else(|e| error!("backfill: could not insert a job: {e}"))
    .unwrap_or_else(|| error!("backfill: job_insert returned no id"));
    // (The insert asks for a worker at commit: the trigger wake_for_new_jobs.)
    warn_if_refused(id, role);
    id
}

/// Warns, without failing the statement that queued it (an application's model update), when
/// the tables the job `id` will use are unusable or refused to `role` (`Tables::reader`): the
/// job will fail at its start, saying the same. (What this process remembers of the tables
/// is enough for a warning, and spares each model update a look at the catalogs.)
fn warn_if_refused(id: i64, role: Oid) {
    let problem = in_subtransaction(|| {
        Tables::remembered(tables::current_schema()).and_then(|tables| tables.reader(role))
    });
    // A look at the catalogs that failed says nothing about the job.
    if let Ok(Err(unusable)) = problem {
        report_with_hint(
            PgLogLevel::WARNING,
            unusable.code,
            format!("backfill job {id} will fail: {}", unusable.message),
            unusable.hint,
        );
    }
}

/// Keeps the workers from starting the queued job `job_id` before `not_before`.
pub fn hold_until(job_id: i64, not_before: TimestampWithTimeZone) {
    as_job_table_owner(|| {
        Spi::run_with_args(
            "SELECT backfill.job_hold($1, $2)",
            &[job_id.into(), not_before.into()],
        )
    })
    .unwrap_or_else(|e| error!("backfill: could not hold job {job_id}: {e}"));
}

/// The role a job runs as; ERROR 22023 when there is no such job.
pub fn role_of(job_id: i64) -> Oid {
    optional_value::<Oid>(
        "SELECT queued_by FROM backfill.job WHERE id = $1",
        &[job_id.into()],
    )
    .unwrap_or_else(|| no_such_job(job_id))
}

/// Raises 42501 unless the current role may run or cancel the job (it has the privileges of
/// the role that queued it).
pub fn check_acts_for(job_id: i64, what: &str) {
    let role = role_of(job_id);
    if !privilege::acts_for(role) {
        let name = privilege::role_name(role);
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied to {what} backfill job {job_id}: it runs as role \"{name}\""
            ),
            format!(
                "Only that role, its members and superusers may {what} it (GRANT {name} TO ...)."
            ),
        );
    }
}

/// Marks a queued or running job cancelled; a runner stops at its next batch boundary.
pub fn cancel(job_id: i64) -> bool {
    check_acts_for(job_id, "cancel");
    let cancelled = as_job_table_owner(|| {
        Spi::get_one_with_args::<bool>("SELECT backfill.job_cancel($1)", &[job_id.into()])
    })
    .unwrap_or_else(|e| error!("backfill: could not cancel job {job_id}: {e}"))
    .unwrap_or(false);
    if cancelled {
        log!("backfill: job {job_id} cancelled");
    }
    cancelled
}

/// Raises ERROR 22023 for a job id that is not in `backfill.job`.
pub fn no_such_job(job_id: i64) -> ! {
    invalid_parameter(&format!("backfill job {job_id} does not exist"))
}

/// The parts of a split job that have not succeeded, in id order (none for a job that is not
/// split).
pub fn unfinished_parts(job_id: i64) -> Vec<i64> {
    as_job_table_owner(|| {
        crate::query::ids(
            "SELECT id FROM backfill.job WHERE parent_id = $1 AND state <> 'succeeded' ORDER BY id",
            &[job_id.into()],
        )
    })
}

/// None while backfill.active_hours lets batches start (or is empty); otherwise how many
/// seconds until it does, read against the server's local time of day: the transaction's
/// start in the server's time zone (TimeZone as configured, not as a session may have set it,
/// so that a client's view of the window is the workers').
pub fn window_closed_for() -> Option<u32> {
    let window = crate::settings::active_hours()?;
    let second = optional_value::<i32>(
        "SELECT extract(epoch FROM (now() AT TIME ZONE s.reset_val)::time)::int
           FROM pg_catalog.pg_settings s WHERE s.name = 'TimeZone'",
        &[],
    )
    .unwrap_or(0);
    window.closed_for(second.max(0) as u32)
}

/// The job's state, or `None` when there is no such job.
pub fn state_of(job_id: i64) -> Option<String> {
    optional_value::<String>(
        "SELECT state FROM backfill.job WHERE id = $1",
        &[job_id.into()],
    )
}

// Exclusive running of a job: a session-level advisory lock of a kind of its own (see
// `run_lock_tag`). It is released by `release_claim`, by the abort of any top-level
// transaction of the process that holds it (an interrupted CALL backfill.run lets the job go
// at once), and, whatever happens, when the process ends.

thread_local! {
    /// The job this process holds the run lock of, and the lock.
    static CLAIMED: Cell<Option<(i64, pg_sys::LOCKTAG)>> = const { Cell::new(None) };
    static ABORT_CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

pub enum Claim {
    Acquired,
    HeldBy(Option<i32>),
}

/// `objsubid` of the run locks in pg_locks. SQL's advisory lock functions make only 1 (one
/// bigint key) and 2 (two integer keys): no role can take, and so hold back, a job's run lock
/// with them, whatever keys it tries.
const RUN_LOCK_KIND: u16 = 0x6266;

/// The run lock of `job_id` in this database: pg_locks shows it as an advisory lock with
/// `classid` and `objid` the job id's high and low 32 bits and `objsubid` RUN_LOCK_KIND.
fn run_lock_tag(job_id: i64) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        // SAFETY: set in every backend connected to a database.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: (job_id >> 32) as u32,
        locktag_field3: job_id as u32,
        locktag_field4: RUN_LOCK_KIND,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// Takes the run lock of `job_id` for this process (once; claiming again is a no-op). A lock
/// on another job still held is released first.
pub fn claim(job_id: i64) -> Claim {
    match CLAIMED.get() {
        Some((held, _)) if held == job_id => return Claim::Acquired,
        Some((other, _)) => release_claim(other),
        None => {}
    }
    register_abort_callback();
    let tag = run_lock_tag(job_id);
    if !try_lock(&tag) {
        // (The id's halves as bigints: an Oid of 0, the high half of any id below 2^32, would
        // be passed as NULL.)
        let holder = optional_value::<i32>(
            "SELECT pid FROM pg_catalog.pg_locks
              WHERE locktype = 'advisory' AND granted AND objsubid = $3 AND database = $1
                AND classid::bigint = ($2 >> 32) AND objid::bigint = ($2 & 4294967295)",
            &[
                Oid::from(tag.locktag_field1).into(),
                job_id.into(),
                i32::from(tag.locktag_field4).into(),
            ],
        );
        return Claim::HeldBy(holder);
    }
    CLAIMED.set(Some((job_id, tag)));
    Claim::Acquired
}

/// Whether no process holds the run lock of `job_id` right now (it is taken and let go).
pub fn is_free(job_id: i64) -> bool {
    if holds_claim(job_id) {
        return false;
    }
    let tag = run_lock_tag(job_id);
    if !try_lock(&tag) {
        return false;
    }
    unlock(&tag);
    true
}

/// Takes the session-level run lock `tag` without waiting; false when another process holds it.
fn try_lock(tag: &pg_sys::LOCKTAG) -> bool {
    // SAFETY: a session lock on an advisory tag, without waiting.
    let result =
        unsafe { pg_sys::LockAcquire(tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, true, true) };
    result != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

/// Releases the session-level run lock `tag` taken by `try_lock`.
fn unlock(tag: &pg_sys::LOCKTAG) {
    // SAFETY: releasing a session lock this process took.
    unsafe { pg_sys::LockRelease(tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, true) };
}

pub fn release_claim(job_id: i64) {
    if let Some((held, tag)) = CLAIMED.get() {
        if held == job_id {
            release(&tag);
        }
    }
}

fn release(tag: &pg_sys::LOCKTAG) {
    CLAIMED.set(None);
    unlock(tag);
}

pub fn holds_claim(job_id: i64) -> bool {
    CLAIMED.get().is_some_and(|(held, _)| held == job_id)
}

fn register_abort_callback() {
    if ABORT_CALLBACK_REGISTERED.get() {
        return;
    }
    ABORT_CALLBACK_REGISTERED.set(true);
    // SAFETY: a process-lifetime callback; it only releases a lock, which is allowed at abort.
    unsafe { pg_sys::RegisterXactCallback(Some(release_on_abort), std::ptr::null_mut()) };
}

/// At the abort of a top-level transaction: whatever was interrupted (a cancelled or failed
/// CALL backfill.run, at any statement), the job is free again for another runner.
#[pg_guard]
unsafe extern "C-unwind" fn release_on_abort(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::XactEvent::XACT_EVENT_ABORT {
        if let Some((_, tag)) = CLAIMED.get() {
            release(&tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp(key: &str, path: &str) -> MetadataPath {
        MetadataPath {
            key: key.into(),
            path: path.into(),
        }
    }

    fn jp(key: &str, path: &str, overwrite: bool) -> JobPath {
        JobPath {
            key: key.into(),
            path: path.into(),
            overwrite,
        }
    }

    #[test]
    fn changes_between_two_path_lists() {
        let old = [mp("a", "x.a"), mp("b", "x.b"), mp("c", "x.c")];
        let new = [
            mp("b", "y.b"),
            mp("a", "x.a"),
            mp("d", "x.d"),
            mp("e", "$.e"),
        ];
        assert_eq!(
            JobPath::changes(&old, &new),
            [
                jp("b", "y.b", true),
                jp("d", "x.d", false),
                jp("e", "$.e", false)
            ]
        );
        // Removal and reordering ask for nothing.
        assert!(JobPath::changes(&old, &[mp("c", "x.c"), mp("a", "x.a")]).is_empty());
        assert!(JobPath::changes(&old, &[]).is_empty());
    }

    #[test]
    fn job_paths_round_trip_through_json() {
        let paths = [jp("a", "x.a", false), jp("it's", "$.b[0]", true)];
        assert_eq!(JobPath::from_json(&JobPath::to_json(&paths)), paths);
        assert_eq!(JobPath::describe(&paths), "a, it's (overwrite)");
    }
}
