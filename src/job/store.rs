//! Every statement on `backfill.job`: the one door to the job table (as pg_cron keeps its job
//! tables behind `job_metadata.c`). Changes go through the functions of sql/jobs.sql and run
//! as the job table's owner (no ordinary role may write it); the per-batch statements are
//! here as texts, which the batch engine prepares once per process.

use super::path::{JobPath, Origin};
use super::state::JobState;
use crate::pg::privilege::as_job_table_owner;
use crate::pg::query::{ids, optional_value};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::spi::SpiHeapTupleData;
use pgrx::JsonB;

/// Inserts a queued job that will run as `role` and returns its id. (The insert asks for a
/// worker at commit: the trigger wake_for_new_jobs.)
pub fn insert(model: &str, paths: &[JobPath], origin: Origin, role: Oid) -> i64 {
    let overwrite = paths.iter().any(|p| p.overwrite);
    as_job_table_owner(|| {
        Spi::get_one_with_args::<i64>(
            "SELECT backfill.job_insert($1::pg_catalog.text, $2::pg_catalog.jsonb, $3::pg_catalog.bool, $4::pg_catalog.text, $5::pg_catalog.regrole)",
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
    .unwrap_or_else(|| error!("backfill: job_insert returned no id"))
}

/// Keeps the workers from starting the queued job `job_id` before `not_before`.
pub fn hold(job_id: i64, not_before: TimestampWithTimeZone) {
    as_job_table_owner(|| {
        Spi::run_with_args(
            "SELECT backfill.job_hold($1::pg_catalog.int8, $2::pg_catalog.timestamptz)",
            &[job_id.into(), not_before.into()],
        )
    })
    .unwrap_or_else(|e| error!("backfill: could not hold job {job_id}: {e}"));
}

/// The role the job runs as, or `None` when there is no such job.
pub fn role_of(job_id: i64) -> Option<Oid> {
    optional_value::<Oid>(
        "SELECT queued_by FROM backfill.job WHERE id = $1",
        &[job_id.into()],
    )
}

/// The job's state, or `None` when there is no such job.
pub fn state_of(job_id: i64) -> Option<JobState> {
    optional_value::<String>(
        "SELECT state FROM backfill.job WHERE id = $1",
        &[job_id.into()],
    )
    .map(|state| parsed(job_id, &state))
}

/// Marks a queued or running job (a part: its whole job) cancelled; false when it had ended.
pub fn cancel(job_id: i64) -> bool {
    as_job_table_owner(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT backfill.job_cancel($1::pg_catalog.int8)",
            &[job_id.into()],
        )
    })
    .unwrap_or_else(|e| error!("backfill: could not cancel job {job_id}: {e}"))
    .unwrap_or(false)
}

/// The parts of a split job that have not succeeded, in id order (none for a job that is not
/// split).
pub fn unfinished_parts(job_id: i64) -> Vec<i64> {
    as_job_table_owner(|| {
        ids(
            "SELECT id FROM backfill.job WHERE parent_id = $1 AND state <> 'succeeded' ORDER BY id",
            &[job_id.into()],
        )
    })
}

/// The queued or running parts of the job `job_id` is a part of, but `job_id` (none for a
/// whole job).
pub fn unfinished_other_parts(job_id: i64) -> Vec<i64> {
    ids(
        "SELECT part.id FROM backfill.job part
           JOIN backfill.job this ON this.parent_id = part.parent_id
          WHERE this.id = $1 AND part.id <> $1 AND part.state IN ('queued', 'running')",
        &[job_id.into()],
    )
}

/// The queued and running jobs a worker may start now (no hold ahead), oldest first; a split
/// job's parts in its place, in id order.
pub fn runnable() -> Vec<i64> {
    ids(
        "SELECT id FROM backfill.job
          WHERE state IN ('queued', 'running') AND parts IS NULL
            AND (not_before IS NULL OR not_before <= now())
          ORDER BY coalesce(parent_id, id), id",
        &[],
    )
}

/// Whether any job is queued or running (whoever runs it).
pub fn any_unfinished() -> bool {
    optional_value::<i32>(
        "SELECT 1 FROM backfill.job WHERE state IN ('queued', 'running') LIMIT 1",
        &[],
    )
    .is_some()
}

/// What the queued and running jobs of this database hold for the workers.
pub struct Outlook {
    pub unfinished: i64,
    /// One of them may start now.
    pub runnable: bool,
    /// Seconds until the nearest hold ends (at most a day: a hold further off, infinity
    /// included, which 0.5.0 let enqueue store, is looked at again in a day).
    pub held_for: Option<i64>,
}

pub fn outlook() -> Outlook {
    let (unfinished, runnable, held_for) = Spi::get_three::<i64, bool, i64>(
        "WITH jobs AS (
             SELECT count(*) AS unfinished,
                    coalesce(bool_or(not_before IS NULL OR not_before <= now()), false) AS runnable,
                    min(not_before) FILTER (WHERE not_before > now()) AS held_until
               FROM backfill.job WHERE state IN ('queued', 'running'))
         SELECT unfinished, runnable,
                CASE WHEN held_until IS NOT NULL THEN
                     ceil(extract(epoch FROM least(held_until, now() + interval '1 day') - now()))::bigint
                END
           FROM jobs",
    )
    .unwrap_or_else(|e| error!("backfill: could not look at the jobs: {e}"));
    Outlook {
        unfinished: unfinished.unwrap_or(0),
        runnable: runnable.unwrap_or(false),
        held_for,
    }
}

/// How many queued or running jobs use tables other than those of `schema`.
pub fn unfinished_elsewhere(schema: Oid) -> i64 {
    as_job_table_owner(|| {
        optional_value::<i64>(
            "SELECT count(*) FROM backfill.job
              WHERE state IN ('queued', 'running')
                AND tables_schema IS DISTINCT FROM
                    (SELECT n.nspname FROM pg_catalog.pg_namespace n WHERE n.oid = $1)",
            &[schema.into()],
        )
    })
    .unwrap_or(0)
}

/// Marks a job running for the first time and fixes its bounds.
pub fn start(job_id: i64, total: i64, max_id: Option<i64>) {
    as_job_table_owner(|| {
        Spi::run_with_args(
            "SELECT backfill.job_start($1::pg_catalog.int8, $2::pg_catalog.int8, $3::pg_catalog.int8)",
            &[job_id.into(), total.into(), max_id.into()],
        )
    })
    .unwrap_or_else(|e| error!("backfill: could not start job {job_id}: {e}"));
}

/// Starts a job split into parts: fixes its bounds and inserts a part for each id range
/// (its last id, `uppers`, and instance count, `totals`).
pub fn split(job_id: i64, total: i64, max_id: Option<i64>, uppers: Vec<i64>, totals: Vec<i64>) {
    as_job_table_owner(|| {
        Spi::run_with_args(
            "SELECT backfill.job_split($1::pg_catalog.int8, $2::pg_catalog.int8, $3::pg_catalog.int8, $4::pg_catalog.int8[], $5::pg_catalog.int8[])",
            &[
                job_id.into(),
                total.into(),
                max_id.into(),
                uppers.into(),
                totals.into(),
            ],
        )
    })
    .unwrap_or_else(|e| error!("backfill: could not split job {job_id}: {e}"));
}

/// Marks a stopped or interrupted job (or part, and its job) running again.
pub fn resume(job_id: i64) {
    as_job_table_owner(|| {
        Spi::run_with_args(
            "SELECT backfill.job_resume($1::pg_catalog.int8)",
            &[job_id.into()],
        )
    })
    .unwrap_or_else(|e| error!("backfill: could not resume job {job_id}: {e}"));
}

/// A finished job's counters and how long it ran.
pub struct Totals {
    pub processed: i64,
    pub updated: i64,
    pub errors: i64,
    pub seconds: f64,
}

/// Marks a job succeeded; its totals.
pub fn finish(job_id: i64) -> Totals {
    as_job_table_owner(|| {
        Spi::connect_mut(|client| {
            let row = client
                .update(
                    "SELECT * FROM backfill.job_finish($1::pg_catalog.int8)",
                    None,
                    &[job_id.into()],
                )?
                .first();
            Ok::<_, pgrx::spi::Error>(Totals {
                processed: row.get::<i64>(1)?.unwrap_or(0),
                updated: row.get::<i64>(2)?.unwrap_or(0),
                errors: row.get::<i64>(3)?.unwrap_or(0),
                seconds: row.get::<f64>(4)?.unwrap_or(0.0),
            })
        })
    })
    .unwrap_or_else(|e| error!("backfill: could not finish job {job_id}: {e}"))
}

/// After the part `part_id` succeeded: marks its job succeeded, with the parts' totals, when
/// no other part is left; whether it did.
pub fn settle(part_id: i64, parent: i64) -> bool {
    as_job_table_owner(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT backfill.job_settle($1::pg_catalog.int8)",
            &[part_id.into()],
        )
    })
    .unwrap_or_else(|e| error!("backfill: could not end job {parent}: {e}"))
        == Some(true)
}

/// Stops a part of a job that failed or was cancelled, saying why.
pub fn stop_part(part_id: i64) {
    as_job_table_owner(|| {
        Spi::run_with_args(
            "SELECT backfill.job_stop_part($1::pg_catalog.int8)",
            &[part_id.into()],
        )
    })
    .unwrap_or_else(|e| error!("backfill: could not stop job {part_id}: {e}"));
}

/// Marks a queued or running job (a part: and its job) failed with `message`.
pub fn fail(job_id: i64, message: &str) {
    as_job_table_owner(|| {
        Spi::run_with_args(
            "SELECT backfill.job_fail($1::pg_catalog.int8, $2::pg_catalog.text)",
            &[job_id.into(), message.into()],
        )
    })
    .unwrap_or_else(|e| error!("backfill: could not mark job {job_id} failed: {e}"));
}

/// "running: 500 of 3000 instances processed, ..." (of the whole job when given a part);
/// `Err` when it could not be read.
pub fn summary(job_id: i64) -> Result<Option<String>, pgrx::spi::Error> {
    as_job_table_owner(|| {
        Spi::get_one_with_args::<String>(
            "SELECT backfill.job_summary($1::pg_catalog.int8)",
            &[job_id.into()],
        )
    })
}

/// Whether the job succeeded and still owes the count of its keys' coverage (`wait` waits
/// for it), or `None` when there is no such job.
pub fn coverage_owed(job_id: i64) -> Option<bool> {
    optional_value::<bool>(
        "SELECT coverage_due FROM backfill.job WHERE id = $1",
        &[job_id.into()],
    )
}

/// A succeeded job whose coverage is still to be counted, as the counter needs it.
pub struct CoverageOwed {
    pub model: String,
    pub keys: Vec<String>,
    pub tables_schema: Oid,
    pub queued_by: Oid,
}

/// Locks the row of job `job_id` when it succeeded and its coverage is still to be counted,
/// and says what to count; `None` when there is nothing to count or another process is
/// counting it (it holds the row: SKIP LOCKED).
pub fn lock_owed_coverage(job_id: i64) -> Option<CoverageOwed> {
    as_job_table_owner(|| {
        Spi::connect_mut(|client| {
            let rows = client.update(
                "SELECT process_model_identifier,
                        ARRAY(SELECT p ->> 'key' FROM jsonb_array_elements(paths) AS p),
                        (SELECT n.oid FROM pg_catalog.pg_namespace n
                          WHERE n.nspname = job.tables_schema),
                        queued_by::oid
                   FROM backfill.job
                  WHERE id = $1 AND coverage_due AND state = 'succeeded'
                    FOR UPDATE SKIP LOCKED",
                None,
                &[job_id.into()],
            )?;
            let Some(row) = rows.into_iter().next() else {
                return Ok(None);
            };
            Ok::<_, pgrx::spi::Error>(Some(CoverageOwed {
                model: row.get::<String>(1)?.unwrap_or_default(),
                keys: row.get::<Vec<String>>(2)?.unwrap_or_default(),
                tables_schema: row.get::<Oid>(3)?.unwrap_or(Oid::INVALID),
                queued_by: row.get::<Oid>(4)?.unwrap_or(Oid::INVALID),
            }))
        })
    })
    .unwrap_or_else(|e| error!("backfill: could not read job {job_id}: {e}"))
}

/// The succeeded jobs whose coverage is still to be counted and that nobody is counting (a
/// crash came between a job's success and its count, or its count is under way elsewhere:
/// `lock_owed_coverage` tells), oldest first, a few at a time.
pub fn owed_coverage() -> Vec<i64> {
    as_job_table_owner(|| {
        ids(
            "SELECT id FROM backfill.job WHERE coverage_due AND state = 'succeeded' ORDER BY id LIMIT 10",
            &[],
        )
    })
}

/// Job `job_id` owes no count any more: its coverage was recorded, or counting it failed
/// (with a warning; `count_coverage` counts again).
pub fn coverage_settled(job_id: i64) {
    as_job_table_owner(|| {
        Spi::run_with_args(
            "SELECT backfill.job_coverage_settled($1::pg_catalog.int8)",
            &[job_id.into()],
        )
    })
    .unwrap_or_else(|e| error!("backfill: could not update job {job_id}: {e}"));
}

/// A job as a runner reads it, row-locked, at the start of a batch.
pub struct LockedJob {
    pub id: i64,
    pub model: String,
    pub state: JobState,
    pub paths: Vec<JobPath>,
    pub total: Option<i64>,
    pub max_instance_id: Option<i64>,
    pub cursor: Option<i64>,
    pub processed: i64,
    /// The role that queued the job: its batches run with this role's privileges.
    pub role: Oid,
    /// The schema of the tables the job reads and writes (backfill's own, or the one that
    /// was attached when it was queued).
    pub tables_schema: Oid,
    /// A part of a split job: the job, and its state (a part stops when its job has).
    pub parent: Option<(i64, JobState)>,
    /// A split job: how many parts it has (it runs nothing itself).
    pub parts: Option<i32>,
    /// Where the row version read is: the batch updates exactly that one.
    pub tid: pg_sys::ItemPointerData,
}

/// How `lock_sql` finds the job row.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Find {
    /// By id ($1), through whatever versions of the row there are.
    ById,
    /// Only the version at TID $2 (and id $1), the one the last batch wrote.
    AtTid,
}

/// Locks and reads a job row, found as `find` says. With `skip_locked`, a row locked by
/// another transaction is not returned.
///
/// Each batch transaction commits asynchronously (synchronous_commit = off, for this
/// transaction only). That is safe because a batch's rows and the job's cursor commit
/// together: a crash that loses the last batches loses them whole, rows and cursor alike,
/// and the job redoes them from the cursor that survived. Nothing is skipped or written
/// twice; the cost of a crash is at most a few batches redone, and a batch no longer waits
/// for its WAL flush.
pub fn lock_sql(find: Find, skip_locked: bool) -> String {
    format!(
        "SELECT process_model_identifier, state, paths, instances_total,
                max_instance_id, last_instance_id, instances_processed,
                set_config('synchronous_commit', 'off', true), ctid, queued_by,
                (SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = job.tables_schema),
                parent_id, parts,
                (SELECT p.state FROM backfill.job p WHERE p.id = job.parent_id)
           FROM backfill.job WHERE {}id = $1 {}",
        match find {
            Find::ById => "",
            Find::AtTid => "ctid = $2 AND ",
        },
        if skip_locked {
            // A row someone holds (an uncommitted cancel) is skipped, and looked at again later.
            "FOR UPDATE SKIP LOCKED"
        } else {
            "FOR UPDATE"
        }
    )
}

/// The row `lock_sql` returned for job `id`.
pub fn read_locked(id: i64, row: SpiHeapTupleData) -> Result<LockedJob, pgrx::spi::Error> {
    let state = |column: usize| -> Result<Option<JobState>, pgrx::spi::Error> {
        Ok(row.get::<String>(column)?.map(|stored| parsed(id, &stored)))
    };
    Ok(LockedJob {
        id,
        model: row.get(1)?.unwrap_or_default(),
        state: state(2)?.unwrap_or_else(|| parsed(id, "")),
        paths: JobPath::from_json(&row.get::<JsonB>(3)?.map(|j| j.0).unwrap_or_default()),
        total: row.get(4)?,
        max_instance_id: row.get(5)?,
        cursor: row.get(6)?,
        processed: row.get(7)?.unwrap_or(0),
        role: row.get(10)?.unwrap_or(Oid::INVALID),
        tables_schema: row.get(11)?.unwrap_or(Oid::INVALID),
        parent: row.get::<i64>(12)?.zip(state(14)?),
        parts: row.get(13)?,
        tid: row.get(9)?.expect("ctid is never null"),
    })
}

/// Moves a job's cursor and counters on by one batch, in the batch's transaction: $1 the job,
/// $2 the batch's last instance, $3–$5 processed, updated, errors, $6 the last error, $7 the
/// row version `lock_sql` read. Returns the new version's TID.
pub const ADVANCE_SQL: &str = "UPDATE backfill.job
                                  SET last_instance_id = coalesce($2, last_instance_id),
                                      instances_processed = instances_processed + $3,
                                      instances_updated = instances_updated + $4,
                                      errors = errors + $5,
                                      last_error = coalesce($6, last_error),
                                      progressed_at = now()
                                WHERE ctid = $7 AND id = $1
                            RETURNING ctid";

/// A stored state; the table's CHECK allows only the five, so anything else is damage.
fn parsed(job_id: i64, stored: &str) -> JobState {
    JobState::parse(stored).unwrap_or_else(|| {
        error!("backfill: job {job_id} has a state this version does not know: \"{stored}\"")
    })
}
