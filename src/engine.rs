//! The batch engine: runs a job in batches of instances, each batch and the job's cursor and
//! counters written in the caller's transaction, so a commit per batch makes progress durable
//! and a crash loses at most the batch in flight. `CALL backfill.run` and the worker both go
//! through `begin`, `run_batch` and `end`.

use crate::coverage;
use crate::error::raise;
use crate::job::store::{self, LockedJob as Job};
use crate::job::{self, Claim, JobPath, JobState};
use crate::privilege::{self, as_job_table_owner, as_role};
use crate::settings;
use crate::subxact::{in_subtransaction, Failure};
use crate::tables::{Table, Tables};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::Oid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiHeapTupleData};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Attempts of a batch that fails as a whole before the job is marked failed.
const BATCH_ATTEMPTS: u32 = 5;
/// Pause before the second attempt; doubled for each further one.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Least time between two progress lines in the server log.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// What the process running a job decides for its batches; the engine itself sniffs nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Runner {
    /// A job row locked by someone else (an uncommitted cancel) is skipped, not waited for:
    /// the runner goes on with other work and comes back to it.
    pub skip_locked_jobs: bool,
    /// The foreign-key fast path (ForeignKeyCheck::LockedInstances) may be used.
    pub foreign_key_fast_path: bool,
    /// Into how many parts a job that starts may be split (1: never), for other runners to
    /// run at the same time.
    pub split_into: usize,
    /// A lock someone holds is waited out, however long: a batch (or a job's start) whose
    /// lock wait times out gives the job back as blocked (`Batch::Blocked`, `Begin::Blocked`)
    /// instead of counting a failure, and the runner tries it again later.
    pub wait_out_locks: bool,
    /// A failed or cancelled job continues from its cursor (a deliberate `CALL run`); the
    /// worker never resumes those.
    pub resume_stopped: bool,
}

impl Runner {
    /// `CALL backfill.run` in a user's session: waits as the session's settings say.
    pub const SESSION: Runner = Runner {
        skip_locked_jobs: false,
        foreign_key_fast_path: false,
        split_into: 1,
        // The session's lock_timeout is its caller's: a batch that meets it is retried, then
        // fails the job, as any failing batch.
        wait_out_locks: false,
        resume_stopped: true,
    };
}

/// How the rows a batch writes meet their foreign key to process_instance.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum ForeignKeyCheck {
    /// The constraint's triggers check each row: three queries an instance for three keys.
    Triggers,
    /// The batch's instances are already locked FOR SHARE by this transaction (see
    /// `lock_instances`), and its one statement runs in replica mode, which skips the
    /// triggers. This is exactly the guarantee the triggers give (each checks its row's
    /// instance with FOR KEY SHARE, a weaker lock, held to commit, so the instance can be
    /// neither deleted nor re-keyed before the rows commit); an instance deleted before the
    /// batch locks it is simply not in the batch. Used only when the runner allows it (the
    /// worker) and only while, with the metadata table locked against DDL, it has no trigger
    /// and no rule other than that foreign key's: replica mode would skip (or, for ENABLE
    /// REPLICA ones, fire) anything else. See `fast_path_holds`.
    LockedInstances,
}

const UNIQUE_VIOLATION: &str = "23505";

thread_local! {
    /// How the batches of the job this process runs insert, once one met a row that was
    /// there (see `Insert`).
    static INSERT_WAY: Cell<Option<(i64, Insert)>> = const { Cell::new(None) };
    /// The job this process runs and where its row's latest version was written.
    ///
    /// Every batch updates the job row, so the row gains a version per batch. While any
    /// snapshot older than the job is open (a long report, pg_dump, a session in
    /// backfill.wait), none of those versions can be pruned, and a lookup by id walks the
    /// whole chain from its start: quadratic in the number of batches. Going to the version
    /// by its TID skips the walk; an update by someone else (cancel) is still followed,
    /// forward, by the row lock.
    static LAST_TID: Cell<Option<(i64, pg_sys::ItemPointerData)>> = const { Cell::new(None) };
}

impl Job {
    /// "job 7", or "job 9 (a part of job 7)", for log lines.
    fn label(&self) -> String {
        match &self.parent {
            Some((parent, _)) => format!("job {} (a part of job {parent})", self.id),
            None => format!("job {}", self.id),
        }
    }

    /// A part whose job failed or was cancelled stops too: true when this one was, just now.
    fn stopped_with_its_job(&self) -> bool {
        let Some((parent, state)) = &self.parent else {
            return false;
        };
        if state.is_unfinished() {
            return false;
        }
        store::stop_part(self.id);
        log!(
            "backfill: {} stopped: job {parent} is {state}",
            self.label()
        );
        true
    }

    /// The job users see: the job itself, or the job a part belongs to.
    fn root(&self) -> i64 {
        self.parent.as_ref().map_or(self.id, |(parent, _)| *parent)
    }

    /// Reads and row-locks the job: a `cancel` waits for the batch in flight, and the batch
    /// sees any cancel committed before it.
    fn lock(id: i64, runner: Runner) -> Lookup {
        let read =
            |row: Option<SpiHeapTupleData>| row.map(|row| store::read_locked(id, row)).transpose();
        let skip_locked = runner.skip_locked_jobs;
        as_job_table_owner(|| {
            let by_tid = match LAST_TID.get() {
                Some((job_id, tid)) if job_id == id => run_plan(
                    Plan::LockJobAt { skip_locked },
                    &[id.into(), tid.into()],
                    read,
                ),
                _ => None,
            };
            // No row at the remembered place (first batch, or the version was pruned after an
            // update by someone else): look it up by id.
            if let Some(job) =
                by_tid.or_else(|| run_plan(Plan::LockJob { skip_locked }, &[id.into()], read))
            {
                return Lookup::Found(job);
            }
            // Not returned: locked by someone (skipped) or not there at all.
            if skip_locked && store::state_of(id).is_some() {
                Lookup::Locked
            } else {
                Lookup::Missing
            }
        })
    }
}

enum Lookup {
    Found(Job),
    /// Its row is locked by another transaction and the runner does not wait.
    Locked,
    Missing,
}

/// What `begin` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// The job is running and this process holds it.
    Started,
    /// Nothing to do: the job is in this state (succeeded, or stopped and not to be resumed).
    NotRunnable(JobState),
    /// Another process runs it.
    Busy(Option<i32>),
    /// The job is split into this many parts, each a job row of its own to begin (it was split
    /// just now, or before).
    Split(i32),
    /// Its start timed out waiting for a lock (the runner waits out locks): what it waits for.
    Blocked(String),
}

/// Takes a job for this process and marks it running. A job that starts for the first time
/// fixes its bounds: the instances of its model with `id <= max(id)` now. A failed or
/// cancelled job is resumed only when the runner says so.
pub fn begin(job_id: i64, runner: Runner) -> Begin {
    match job::claim(job_id) {
        Claim::Acquired => {}
        Claim::HeldBy(pid) => return Begin::Busy(pid),
    }
    let begun = start_claimed(job_id, runner);
    if begun != Begin::Started {
        job::release_claim(job_id);
    }
    begun
}

/// `begin` once this process holds the job's run lock.
fn start_claimed(job_id: i64, runner: Runner) -> Begin {
    let job = match Job::lock(job_id, runner) {
        Lookup::Found(job) => job,
        Lookup::Locked => return Begin::Busy(None),
        Lookup::Missing => {
            job::release_claim(job_id);
            job::no_such_job(job_id);
        }
    };
    let runnable = job.state.is_unfinished() || (job.state.is_stopped() && runner.resume_stopped);
    if !runnable {
        return Begin::NotRunnable(job.state);
    }
    if let Some(parts) = job.parts {
        return Begin::Split(parts);
    }
    if !runner.resume_stopped && job.stopped_with_its_job() {
        return Begin::NotRunnable(JobState::Cancelled);
    }
    if !privilege::role_exists(job.role) {
        return failed_at_start(
            job_id,
            &format!(
                "role {} that queued the job no longer exists",
                job.role.to_u32()
            ),
        );
    }
    // The start reads only the instances (to count them).
    let (tables, role) = match usable_tables(job.tables_schema, job.role, &[Table::Instances]) {
        Ok(usable) => usable,
        Err(failure) => return not_started(&job, runner, failure),
    };
    let keys = JobPath::describe(&job.paths);
    if job.total.is_none() {
        // Counted as the job's role: instances it cannot see (row-level security) are not
        // part of its job.
        let counted =
            caught_unless_interrupt(|| as_role(role, || count_instances(&job, &tables, runner)));
        let counted = match counted {
            Ok(counted) => counted.unwrap_or_else(|e| {
                error!("backfill: could not count instances of job {job_id}: {e}")
            }),
            // The role may not read the instances at all: nothing to retry.
            Err(failure) => return not_started(&job, runner, failure),
        };
        let Counted { total, max_id, .. } = counted;
        let parts = counted.parts();
        let started = format!(
            "backfill: job {job_id} started for model {}: keys {keys}; {total} instances{} in schema {}, as role {}",
            job.model,
            max_id.map(|m| format!(" up to id {m}")).unwrap_or_default(),
            tables.schema_sql,
            privilege::role_name(role)
        );
        if parts.len() > 1 {
            let uppers: Vec<i64> = parts.iter().map(|p| p.0).collect();
            let totals: Vec<i64> = parts.iter().map(|p| p.1).collect();
            store::split(job_id, total, max_id, uppers, totals);
            log!(
                "{started}; split into {} parts of {} instances",
                parts.len(),
                parts
                    .iter()
                    .map(|p| p.1.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return Begin::Split(parts.len() as i32);
        }
        store::start(job_id, total, max_id);
        log!("{started}");
    } else {
        store::resume(job_id);
        if job.parent.is_some() && job.processed == 0 {
            log!(
                "backfill: {} started: {} instances {}up to id {}",
                job.label(),
                job.total.unwrap_or(0),
                job.cursor
                    .map_or(String::new(), |c| format!("after id {c} ")),
                job.max_instance_id.unwrap_or(0)
            );
            LAST_PROGRESS_LOG.set(Some(Instant::now()));
            return Begin::Started;
        }
        log!(
            "backfill: {} resumed for model {}: keys {keys}; {} of {} instances done, cursor at {}",
            job.label(),
            job.model,
            job.processed,
            job.total.unwrap_or(0),
            job.cursor
                .map_or("the start".to_owned(), |c| format!("instance {c}"))
        );
    }
    LAST_PROGRESS_LOG.set(Some(Instant::now()));
    Begin::Started
}

/// A job that cannot start (its role is gone, or may not read the instances): failed, with
/// the reason, and nothing to run.
/// A start that failed: a failure no retry mends (the role may not read the tables) fails
/// the job, a worker waits out a lock, and anything else is raised again.
fn not_started(job: &Job, runner: Runner, failure: Failure) -> Begin {
    if is_permanent(&failure) {
        warning!("backfill: job {} failed: {failure}", job.id);
        return failed_at_start(job.id, &failure.with_hint());
    }
    if runner.wait_out_locks && is_lock_timeout(&failure) {
        return Begin::Blocked(waiting_for(job, &failure));
    }
    failure.rethrow()
}

fn failed_at_start(job_id: i64, message: &str) -> Begin {
    fail_job(job_id, message);
    Begin::NotRunnable(JobState::Failed)
}

/// What a job's first start found: its instances, the greatest id, and where to split it.
struct Counted {
    total: i64,
    max_id: Option<i64>,
    /// The id at the end of each part but the last (empty: not split).
    splits: Vec<i64>,
}

impl Counted {
    /// Each part's last id and instance count, in id order; one part when the job is whole.
    /// Part k of n ends at position floor(total * k / n) in id order (what count_instances
    /// looked up), so the counts are exact and differ by at most one.
    fn parts(&self) -> Vec<(i64, i64)> {
        let n = self.splits.len() as i64 + 1;
        let Some(max_id) = self.max_id else {
            return Vec::new();
        };
        let end = |k: i64| self.total * k / n;
        self.splits
            .iter()
            .copied()
            .chain(std::iter::once(max_id))
            .enumerate()
            .map(|(k, upper)| (upper, end(k as i64 + 1) - end(k as i64)))
            .collect()
    }
}

/// Instances of a job (not split) or of a part get at least this many batches each.
const MIN_BATCHES_PER_PART: i64 = 10;

/// Counts the job's instances and, when the runner splits jobs and there are enough, finds
/// the ids where its parts end, in one statement (one snapshot: the counts are exact).
fn count_instances(
    job: &Job,
    tables: &Tables,
    runner: Runner,
) -> Result<Counted, pgrx::spi::Error> {
    let instances = tables.sql_name("process_instance");
    let sql = format!(
        "WITH counted AS (
             SELECT count(*) AS total, max(i.id)::bigint AS max_id,
                    least($2, greatest(count(*) / $3, 1)) AS parts
               FROM {instances} i WHERE i.process_model_identifier = $1)
         SELECT total, max_id,
                CASE WHEN parts > 1 THEN ARRAY(
                    SELECT s.id FROM (SELECT i.id::bigint AS id, row_number() OVER (ORDER BY i.id) AS position
                                        FROM {instances} i WHERE i.process_model_identifier = $1) s
                     WHERE s.position IN (SELECT counted.total * k / counted.parts
                                            FROM generate_series(1, counted.parts - 1) k)
                     ORDER BY s.id) END
           FROM counted"
    );
    let min_part = settings::batch_size().saturating_mul(MIN_BATCHES_PER_PART);
    Spi::connect(|client| {
        let row = client
            .select(
                &sql,
                Some(1),
                &[
                    job.model.as_str().into(),
                    (runner.split_into.max(1) as i64).into(),
                    min_part.into(),
                ],
            )?
            .first();
        Ok(Counted {
            total: row.get::<i64>(1)?.unwrap_or(0),
            max_id: row.get::<i64>(2)?,
            splits: row.get::<Vec<i64>>(3)?.unwrap_or_default(),
        })
    })
}

/// Gives up this process's hold on the job (it stays in whatever state it is).
pub fn end(job_id: i64) {
    job::release_claim(job_id);
}

/// What one call of `run_batch` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Batch {
    /// A batch was committed-to-be; call again for the next.
    More,
    /// The job's row is locked by another transaction (a cancel not yet committed) and the
    /// runner does not wait: nothing was done; try again later.
    Busy,
    /// The job is finished: its state is now this (succeeded or failed), or it was found
    /// stopped (cancelled).
    Finished(JobState),
    /// The batch timed out waiting for a lock (the runner waits out locks): nothing was done,
    /// nothing is counted; what it waits for.
    Blocked(String),
}

thread_local! {
    static LAST_PROGRESS_LOG: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs the next batch of the job in the current transaction. The caller must hold the job
/// (`begin`) and commits afterwards.
pub fn run_batch(job_id: i64, runner: Runner) -> Batch {
    if !job::holds_claim(job_id) {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("this session does not run backfill job {job_id}"),
            format!("Run a job with CALL backfill.run({job_id})."),
        );
    }
    let job = match Job::lock(job_id, runner) {
        Lookup::Found(job) => job,
        Lookup::Locked => return Batch::Busy,
        Lookup::Missing => raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("backfill job {job_id} was deleted while it ran"),
            "Nothing more is run for it.",
        ),
    };
    if job.state != JobState::Running || job.parts.is_some() {
        log!(
            "backfill: {} stopped ({}) at cursor {:?}",
            job.label(),
            job.state,
            job.cursor
        );
        return Batch::Finished(job.state);
    }
    if job.stopped_with_its_job() {
        return Batch::Finished(JobState::Cancelled);
    }
    let Some(max_id) = job.max_instance_id else {
        return finish(&job);
    };
    let limit = settings::batch_size();
    let mut attempt = 1;
    let (outcome, batch) = loop {
        // The tables are locked and checked in each attempt: a lock someone holds on one of
        // them is waited for and retried as a failure of the batch.
        let tried =
            usable_tables(job.tables_schema, job.role, &Table::ALL).and_then(|(tables, role)| {
                let batch = BatchOf {
                    job: &job,
                    role,
                    tables,
                    max_id,
                    limit,
                };
                batch.attempt(runner).map(|outcome| (outcome, batch))
            });
        match tried {
            Ok(done) => break done,
            Err(failure) if is_permanent(&failure) => return fail(&job, &failure, attempt),
            Err(failure) if runner.wait_out_locks && is_lock_timeout(&failure) => {
                return Batch::Blocked(waiting_for(&job, &failure));
            }
            Err(failure) if attempt >= BATCH_ATTEMPTS => return fail(&job, &failure, attempt),
            Err(failure) => {
                let delay = FIRST_RETRY_DELAY * 2u32.pow(attempt - 1);
                warning!(
                    "backfill: job {job_id}: batch after instance {} failed (attempt {attempt} of {BATCH_ATTEMPTS}), \
                     retrying in {:.1} s: {failure}",
                    job.cursor.map_or("<start>".to_owned(), |c| c.to_string()),
                    delay.as_secs_f64(),
                );
                crate::wake::sleep(delay);
                attempt += 1;
            }
        }
    };
    if outcome.instances > 0 {
        // Outside the batch's subtransaction, in the transaction that locked the job row: a
        // row locked by a transaction and updated by its subtransaction gets a MultiXact, and
        // every later read of the row's versions has to look its members up.
        advance(&job, &outcome);
    }
    let cursor = outcome.cursor.or(job.cursor);
    let last = match cursor {
        Some(cursor) if cursor >= max_id => true,
        // A short batch may only mean that instances were deleted while the batch waited for
        // them: the job ends when none is left.
        _ if outcome.instances < batch.limit => !batch.more_after(cursor),
        _ => false,
    };
    if last {
        return finish(&job);
    }
    log_progress(job.root());
    Batch::More
}

/// A job's tables (those of `schema`), with `reading` locked (`Tables::locked`) and checked,
/// and the role its statements run as on them for `queued_by`, the role that queued it
/// (`Tables::reader`: that role, or the tables' owner, as PostgreSQL runs a table's
/// maintenance as its owner). Tables that are unusable (dropped, a column changed type since
/// they were attached) or refused to that role are a failure that a retry cannot cure
/// (`is_permanent`), with the reason and what to do.
fn usable_tables(schema: Oid, queued_by: Oid, reading: &[Table]) -> Result<(Tables, Oid), Failure> {
    caught_unless_interrupt(|| {
        Tables::locked(schema, reading)
            .and_then(|tables| {
                let reader = tables.reader(queued_by)?;
                Ok((tables, reader))
            })
            .unwrap_or_else(|unusable| unusable.raise())
    })
}

/// What a batch did, to be added to the job's counters.
#[derive(Debug, Default)]
struct Outcome {
    instances: i64,
    cursor: Option<i64>,
    updated: i64,
    errors: i64,
    last_error: Option<String>,
}

/// The next batch of a job: the next `limit` instances of its model after its cursor, up to
/// `max_id`, in its tables.
struct BatchOf<'j> {
    job: &'j Job,
    /// Whose privileges the batch has (`Tables::reader`).
    role: Oid,
    tables: Tables,
    max_id: i64,
    limit: i64,
}

impl BatchOf<'_> {
    /// One attempt: the instances are locked, then written; an attempt that fails as a whole
    /// is rolled back as a whole. The locks are taken in a subtransaction of their own that
    /// commits, so they are held to the end of the transaction even when the writing fails
    /// and is done again instance by instance.
    fn attempt(&self, runner: Runner) -> Result<Outcome, Failure> {
        let locked = caught_unless_interrupt(|| self.lock_instances())?;
        if locked.ids.is_empty() {
            return Ok(Outcome::default());
        }
        let foreign_key = if locked.for_share && runner.foreign_key_fast_path && {
            // SAFETY: see fast_path_holds.
            unsafe { fast_path_holds(&self.tables) }
        } {
            ForeignKeyCheck::LockedInstances
        } else {
            ForeignKeyCheck::Triggers
        };
        let mut outcome = match self.write_rows(&locked.ids, foreign_key) {
            Ok(updated) => Outcome {
                updated,
                ..Outcome::default()
            },
            Err(failure) if is_instance_failure(&failure) => {
                caught_unless_interrupt(|| self.isolate(&locked.ids, foreign_key))??
            }
            Err(failure) => return Err(failure),
        };
        outcome.instances = locked.ids.len() as i64;
        outcome.cursor = locked.ids.last().copied();
        Ok(outcome)
    }

    /// The batch's instances, in id order, locked FOR SHARE to the end of the transaction
    /// when the job's role may lock them (it needs UPDATE on some column, as for any row lock).
    ///
    /// The lock is what makes a batch safe next to the application's own writes. SpiffWorkflow
    /// saves an instance by updating its process_instance row (which takes FOR NO KEY UPDATE,
    /// conflicting with FOR SHARE) and then inserting each metadata row it does not find, with
    /// no ON CONFLICT. So an instance the application is saving is waited for, and the batch,
    /// a statement of its own with a snapshot taken after the wait, sees its committed rows
    /// and leaves them; an instance the batch holds makes the application wait for the
    /// batch's commit, after which it finds the batch's rows and updates them. Neither side
    /// ever inserts a row the other has inserted, and the application's value is never
    /// replaced by a fill. (An overwrite job replaces values as its path gives them from the
    /// same committed task data the application read.)
    fn lock_instances(&self) -> Locked {
        let for_share = may_lock(self.role, self.tables.instances);
        let plan = Plan::LockInstances {
            tables: self.tables.clone(),
            for_share,
        };
        let after = self.job.cursor.unwrap_or(i64::MIN);
        let args = [
            self.job.model.as_str().into(),
            after.into(),
            self.max_id.into(),
            self.limit.into(),
        ];
        let ids = as_role(self.role, || {
            run_plan(plan, &args, |row| match row {
                Some(row) => Ok(row.get::<Vec<i64>>(1)?.unwrap_or_default()),
                None => Ok(Vec::new()),
            })
        });
        Locked { ids, for_share }
    }

    /// Whether instances of the job are left after `cursor`.
    fn more_after(&self, cursor: Option<i64>) -> bool {
        let sql = format!(
            "SELECT EXISTS (SELECT FROM {} i
                             WHERE i.process_model_identifier = $1 AND i.id > $2 AND i.id <= $3)",
            self.tables.sql_name("process_instance")
        );
        let after = cursor.unwrap_or(i64::MIN);
        as_role(self.role, || {
            Spi::get_one_with_args::<bool>(
                &sql,
                &[
                    self.job.model.as_str().into(),
                    after.into(),
                    self.max_id.into(),
                ],
            )
        })
        .unwrap_or_else(|e| error!("backfill: could not look for more instances: {e}"))
        .unwrap_or(false)
    }

    /// Writes the rows of `ids`, a subtransaction a statement, the way this job's batches
    /// have got to (`Insert`); a unique violation sends them the next way, rows that a
    /// batch written ON CONFLICT fails on are the instances' own failures.
    fn write_rows(&self, ids: &[i64], foreign_key: ForeignKeyCheck) -> Result<i64, Failure> {
        let mut insert = if self.job.paths.iter().any(|p| p.overwrite) {
            Insert::Overwrite
        } else {
            match INSERT_WAY.get() {
                Some((job, insert)) if job == self.job.id => insert,
                _ => Insert::New,
            }
        };
        loop {
            let written = caught_unless_interrupt(|| self.write(ids, foreign_key, insert));
            match (&written, insert.after_conflict()) {
                (Err(failure), Some(next)) if failure.sqlstate == UNIQUE_VIOLATION => {
                    insert = next;
                    INSERT_WAY.set(Some((self.job.id, insert)));
                }
                _ => return written,
            }
        }
    }

    /// Extracts and writes the rows of `ids` in one statement; the number of instances that
    /// got a row written.
    fn write(&self, ids: &[i64], foreign_key: ForeignKeyCheck, insert: Insert) -> i64 {
        let job = self.job;
        let keys: Vec<String> = job.paths.iter().map(|p| p.key.clone()).collect();
        let paths: Vec<String> = job.paths.iter().map(|p| p.path.clone()).collect();
        let overwrite: Vec<String> = job
            .paths
            .iter()
            .filter(|p| p.overwrite)
            .map(|p| p.key.clone())
            .collect();
        let plan = Plan::Batch {
            insert,
            tables: self.tables.clone(),
        };
        let args = [
            ids.to_vec().into(),
            keys.into(),
            paths.into(),
            overwrite.into(),
            transaction_start_epoch().into(),
        ];
        let statement = || {
            run_plan(plan, &args, |row| match row {
                Some(row) => Ok(row.get::<i64>(1)?.unwrap_or(0)),
                None => Ok(0),
            })
        };
        // The job's rows are read and written with its role's privileges, row-level security
        // included.
        as_role(self.role, || match foreign_key {
            ForeignKeyCheck::Triggers => statement(),
            ForeignKeyCheck::LockedInstances => in_replica_mode(statement),
        })
    }

    /// The slow path after a batch failed because of one instance's data: each instance in
    /// its own subtransaction, failures counted and logged with the instance id.
    fn isolate(&self, ids: &[i64], foreign_key: ForeignKeyCheck) -> Result<Outcome, Failure> {
        let mut outcome = Outcome::default();
        for &id in ids {
            match self.write_rows(&[id], foreign_key) {
                Ok(updated) => outcome.updated += updated,
                Err(failure) if is_instance_failure(&failure) => {
                    warning!(
                        "backfill: job {}: instance {id} failed and is skipped: {failure}",
                        self.job.id
                    );
                    outcome.errors += 1;
                    outcome.last_error = Some(format!("instance {id}: {failure}"));
                }
                Err(failure) => return Err(failure),
            }
        }
        Ok(outcome)
    }
}

/// The instances of a batch, and whether they are locked FOR SHARE.
struct Locked {
    ids: Vec<i64>,
    for_share: bool,
}

/// How a batch statement inserts its rows. A job starts with `New` and moves down the list
/// each time a batch fails with 23505, for the rest of its run in this process; a batch that
/// fails so is written again the next way, in a new subtransaction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Insert {
    /// Every row, without ON CONFLICT: the unique index is the only check, and a row that
    /// is already there fails the batch. The fastest way, and the common case when a path
    /// is added: none of its rows exist yet.
    New,
    /// Rows of keys the instance has no row for, found by one index probe per instance,
    /// without ON CONFLICT: only a row someone else inserts after the statement's snapshot
    /// (a writer that does not lock the instance first) fails the batch.
    Missing,
    /// ON CONFLICT DO NOTHING: one speculative insertion a row (an index probe before it and
    /// a confirmation record in the WAL after it), safe against any concurrent insert.
    OnConflict,
    /// ON CONFLICT DO UPDATE for the keys whose path the job replaces.
    Overwrite,
}

impl Insert {
    /// The way to try after a batch written this way met a row that was there (23505).
    fn after_conflict(self) -> Option<Insert> {
        match self {
            Insert::New => Some(Insert::Missing),
            Insert::Missing => Some(Insert::OnConflict),
            Insert::OnConflict | Insert::Overwrite => None,
        }
    }
}

/// The batch statement, for the job's tables: for each instance, the data of its latest
/// completed task (latest by end_in_seconds, then guid; a completed task without an end
/// counts as earlier than any with one), the paths extracted in Rust once per instance, and
/// the rows written set-based, as `insert` says.
pub(crate) fn batch_sql(tables: &Tables, insert: Insert) -> String {
    let metadata = tables.sql_name("process_instance_metadata");
    // A NOT NULL value column gets no row for nothing found (SpiffWorkflow's own rule).
    let mut only = Vec::new();
    if tables.value_not_null {
        only.push("e.value IS NOT NULL");
    }
    // The keys an instance has rows for, compared byte for byte: equal bytes are equal under
    // any collation the key column may have, and a key the index deems equal in other bytes
    // only costs the 23505 that sends the batch to OnConflict.
    let (have, have_column) = if insert == Insert::Missing {
        only.push("NOT coalesce(e.key COLLATE \"C\" = ANY (e.have), false)");
        (
            format!(
                "LEFT JOIN LATERAL (
            SELECT array_agg(x.key::text COLLATE \"C\") AS keys
              FROM {metadata} x
             WHERE x.process_instance_id = b.id) have ON true"
            ),
            ", have.keys AS have",
        )
    } else {
        (String::new(), "")
    };
    let only = if only.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", only.join(" AND "))
    };
    // Only keys whose path the job replaces are overwritten, only when the value differs, and
    // never with nothing.
    let on_conflict = match insert {
        Insert::New | Insert::Missing => "",
        Insert::OnConflict => "ON CONFLICT (process_instance_id, key) DO NOTHING",
        Insert::Overwrite => {
            "ON CONFLICT (process_instance_id, key) DO UPDATE
              SET value = EXCLUDED.value, updated_at_in_seconds = EXCLUDED.updated_at_in_seconds
            WHERE m.key = ANY($4::text[]) AND EXCLUDED.value IS NOT NULL
              AND m.value IS DISTINCT FROM EXCLUDED.value"
        }
    };
    format!(
        "
WITH extracted AS (
    -- The two unnests in the select list run in lockstep, a (key, value) row each, without
    -- the tuplestore a set-returning function in FROM would fill per instance. extract_values
    -- has an overload for json (read from its text) and one for jsonb.
    SELECT b.id,
           unnest($2::text[]) AS key,
           unnest(backfill.extract_values(coalesce(d.data, '{{}}'), $3::text[])) AS value
           {have_column}
      FROM unnest($1::bigint[]) AS b(id)
      {latest}
      {have}
), written AS (
    INSERT INTO {metadata} AS m
           (process_instance_id, key, value, created_at_in_seconds, updated_at_in_seconds)
    SELECT e.id, e.key, e.value, $5, $5
      FROM extracted e
     {only}
    {on_conflict}
    RETURNING m.process_instance_id
)
SELECT count(DISTINCT process_instance_id) FROM written",
        latest = latest_task_data_join(tables, "b.id"),
    )
}

/// The join that gives each instance (id in `instance`) the data `d.data` of its latest
/// completed task (latest by end_in_seconds, then guid; a completed task without an end counts
/// as earlier than any with one), NULL when it has none: what a batch and a preview read.
/// The document is looked up by the hash the subquery gives, as an index condition: one probe
/// of each index an instance whatever the statistics say. Joined to the task instead, the
/// planner may put a Memoize node over the lookup (copying every document into a cache no
/// batch hits, a tenth of a batch's time) or merge-join it against the whole index.
pub(crate) fn latest_task_data_join(tables: &Tables, instance: &str) -> String {
    format!(
        "LEFT JOIN LATERAL (
            SELECT data.data
              FROM {data} data
             WHERE data.hash = (SELECT t.json_data_hash
                                  FROM {tasks} t
                                 WHERE t.process_instance_id = {instance} AND t.state = 'COMPLETED'
                                 ORDER BY t.end_in_seconds DESC NULLS LAST, t.guid DESC
                                 LIMIT 1)) d ON true",
        tasks = tables.sql_name("task"),
        data = tables.sql_name("json_data"),
    )
}

/// Whether `role` may lock rows of `instances` FOR SHARE: it needs UPDATE on the table or on
/// some column of it.
fn may_lock(role: Oid, instances: Oid) -> bool {
    let update = pg_sys::ACL_UPDATE as pg_sys::AclMode;
    // SAFETY: catalog lookups inside a transaction.
    unsafe {
        pg_sys::pg_class_aclcheck(instances, role, update) == pg_sys::AclResult::ACLCHECK_OK
            || pg_sys::pg_attribute_aclcheck_all(
                instances,
                role,
                update,
                pg_sys::AclMaskHow::ACLMASK_ANY,
            ) == pg_sys::AclResult::ACLCHECK_OK
    }
}

/// Whether the fast path gives exactly the triggers' guarantee for this batch, whose
/// instances this transaction holds FOR SHARE: the metadata table is a plain table (the rows
/// of a partitioned one go to its partitions, whose own triggers replica mode would skip too)
/// with no trigger and no rule but those of its foreign key to process_instance (on
/// process_instance_id).
///
/// The metadata table is locked ROW EXCLUSIVE first, held to commit: that conflicts with what
/// CREATE TRIGGER, CREATE RULE and ADD FOREIGN KEY take, so none of them can commit between
/// this look and the batch's commit; and taking the lock processes the invalidations of
/// whatever committed before it was granted, so the relation cache read here is current.
///
/// # Safety
/// Inside a transaction.
unsafe fn fast_path_holds(tables: &Tables) -> bool {
    // SAFETY: catalog and relation-cache lookups inside a transaction; the relation is opened
    // and closed here, and its trigger and foreign-key lists are only read.
    unsafe {
        pg_sys::LockRelationOid(
            tables.metadata,
            pg_sys::RowExclusiveLock as pg_sys::LOCKMODE,
        );
        let column = pg_sys::get_attnum(tables.metadata, c"process_instance_id".as_ptr());
        let relation = pg_sys::RelationIdGetRelation(tables.metadata);
        if relation.is_null() {
            return false;
        }
        if (*(*relation).rd_rel).relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char {
            pg_sys::RelationClose(relation);
            return false;
        }
        let foreign_key = instance_foreign_key(relation, tables.instances, column);
        let trigdesc = (*relation).trigdesc;
        let only_foreign_key = trigdesc.is_null()
            || (0..(*trigdesc).numtriggers as usize)
                .all(|i| Some((*(*trigdesc).triggers.add(i)).tgconstraint) == foreign_key);
        let no_rules = (*relation).rd_rules.is_null();
        pg_sys::RelationClose(relation);
        only_foreign_key && no_rules
    }
}

/// The constraint of the metadata table's foreign key on `column` to `instances`, if any.
///
/// # Safety
/// `relation` is open.
unsafe fn instance_foreign_key(
    relation: pg_sys::Relation,
    instances: Oid,
    column: pg_sys::AttrNumber,
) -> Option<Oid> {
    // SAFETY (caller): the list belongs to the open relation's cache entry.
    unsafe {
        let keys = pg_sys::RelationGetFKeyList(relation);
        if keys.is_null() {
            return None;
        }
        (0..(*keys).length as usize)
            .map(|i| (*(*keys).elements.add(i)).ptr_value as *const pg_sys::ForeignKeyCacheInfo)
            .find(|&key| {
                (*key).confrelid == instances && (*key).nkeys == 1 && (*key).conkey[0] == column
            })
            .map(|key| (*key).conoid)
    }
}

/// Runs `work` (one batch statement) in replica mode, which skips the metadata table's
/// foreign-key triggers. The variable is set for this statement alone and put back however it
/// ends: through the setting (SET session_replication_role) the mode would also apply to the
/// job's own updates and every plan would be invalidated at each change.
fn in_replica_mode<R>(work: impl FnOnce() -> R) -> R {
    // SAFETY: the backend global behind session_replication_role, read when triggers are
    // queued; restored before anything else runs.
    let saved = unsafe { pg_sys::SessionReplicationRole };
    // SAFETY: as above; a plain int of this backend, no other thread touches it.
    unsafe { pg_sys::SessionReplicationRole = pg_sys::SESSION_REPLICATION_ROLE_REPLICA as i32 };
    PgTryBuilder::new(std::panic::AssertUnwindSafe(work))
        // SAFETY: puts back the value read above, on success and on any error alike.
        .finally(|| unsafe { pg_sys::SessionReplicationRole = saved })
        .execute()
}

/// The statements of a batch, prepared once per process and kept (per set of tables: a table
/// dropped and created again is another).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Plan {
    LockJob { skip_locked: bool },
    LockJobAt { skip_locked: bool },
    Advance,
    LockInstances { tables: Tables, for_share: bool },
    Batch { insert: Insert, tables: Tables },
}

impl Plan {
    fn sql(&self) -> String {
        match self {
            Plan::LockJob { skip_locked } => store::lock_sql(store::Find::ById, *skip_locked),
            Plan::LockJobAt { skip_locked } => store::lock_sql(store::Find::AtTid, *skip_locked),
            Plan::Advance => store::ADVANCE_SQL.to_owned(),
            Plan::LockInstances { tables, for_share } => format!(
                "SELECT array_agg(id ORDER BY id) FROM (
                     SELECT i.id::bigint AS id FROM {} i
                      WHERE i.process_model_identifier = $1 AND i.id > $2 AND i.id <= $3
                      ORDER BY i.id LIMIT $4{}) batch",
                tables.sql_name("process_instance"),
                if *for_share { " FOR SHARE OF i" } else { "" }
            ),
            Plan::Batch { insert, tables } => batch_sql(tables, *insert),
        }
    }

    fn argument_types(&self) -> Vec<PgOid> {
        const INT8: PgBuiltInOids = PgBuiltInOids::INT8OID;
        const TEXT: PgBuiltInOids = PgBuiltInOids::TEXTOID;
        const TEXTS: PgBuiltInOids = PgBuiltInOids::TEXTARRAYOID;
        const TID: PgBuiltInOids = PgBuiltInOids::TIDOID;
        const INT8S: PgBuiltInOids = PgBuiltInOids::INT8ARRAYOID;
        let types: &[PgBuiltInOids] = match self {
            Plan::LockJob { .. } => &[INT8],
            Plan::LockJobAt { .. } => &[INT8, TID],
            Plan::Advance => &[INT8, INT8, INT8, INT8, INT8, TEXT, TID],
            // The write time is computed once per batch, not twice per row.
            Plan::LockInstances { .. } => &[TEXT, INT8, INT8, INT8],
            Plan::Batch { .. } => &[INT8S, TEXTS, TEXTS, TEXTS, INT8],
        };
        types.iter().map(|t| PgOid::BuiltIn(*t)).collect()
    }
}

thread_local! {
    static PLANS: RefCell<HashMap<Plan, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// Runs a kept plan and hands its first row (if any) to `read`.
fn run_plan<R>(
    plan: Plan,
    args: &[DatumWithOid],
    read: impl FnOnce(Option<SpiHeapTupleData>) -> Result<R, pgrx::spi::Error>,
) -> R {
    Spi::connect_mut(|client| {
        let prepared = match PLANS.with_borrow(|plans| plans.get(&plan).cloned()) {
            Some(prepared) => prepared,
            None => {
                let sql = plan.sql();
                let prepared = Rc::new(
                    client
                        .prepare_mut(sql.as_str(), &plan.argument_types())?
                        .keep(),
                );
                PLANS.with_borrow_mut(|plans| plans.insert(plan, Rc::clone(&prepared)));
                prepared
            }
        };
        let table = client.update(&*prepared, None, args)?;
        let row = if table.is_empty() {
            None
        } else {
            table.first().get_heap_tuple()?
        };
        read(row)
    })
    .unwrap_or_else(|e| error!("backfill: batch statement failed: {e}"))
}

/// `extract(epoch FROM now())::bigint`: the transaction's start in epoch seconds, rounded.
fn transaction_start_epoch() -> i64 {
    const POSTGRES_EPOCH_IN_UNIX_MICROS: i64 = 946_684_800 * 1_000_000;
    // SAFETY: the start timestamp of the current transaction.
    let since_2000 = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    (since_2000 + POSTGRES_EPOCH_IN_UNIX_MICROS + 500_000).div_euclid(1_000_000)
}

fn advance(job: &Job, outcome: &Outcome) {
    let args = [
        job.id.into(),
        outcome.cursor.into(),
        outcome.instances.into(),
        outcome.updated.into(),
        outcome.errors.into(),
        outcome.last_error.clone().into(),
        job.tid.into(),
    ];
    let tid = as_job_table_owner(|| {
        run_plan(Plan::Advance, &args, |row| match row {
            Some(row) => row.get::<pg_sys::ItemPointerData>(1),
            None => Ok(None),
        })
    })
    .unwrap_or_else(|| error!("backfill: job {} changed under its row lock", job.id));
    LAST_TID.set(Some((job.id, tid)));
}

/// Errors caused by one instance's data (bad values, constraint or trigger failures raised for
/// that row); anything else is a failure of the batch as a whole.
/// Program limits (class 54) count among them: a document too deep for JSONPath, a value too
/// big for a row.
pub(crate) fn is_instance_failure(failure: &Failure) -> bool {
    matches!(
        &failure.sqlstate[..2],
        "22" | "23" | "P0" | "2F" | "38" | "39" | "54"
    )
}

/// Failures that a retry cannot cure: the job's role lacks a privilege (42501), or a table,
/// column or schema the job needs is gone (class 42, 3F000). The job fails at once, saying why.
fn is_permanent(failure: &Failure) -> bool {
    failure.sqlstate.starts_with("42") || failure.sqlstate.starts_with("3F")
}

/// A lock wait that timed out (lock_timeout, or the worker's bound on it).
fn is_lock_timeout(failure: &Failure) -> bool {
    failure.sqlstate == "55P03"
}

/// "job 7 waits for a lock: ..." after `failure` (a lock wait of the job's that timed out),
/// with what is in the way on the job's four tables: the sessions holding a lock that
/// conflicts with one a batch takes (ROW EXCLUSIVE on the metadata table, ROW SHARE or
/// ACCESS SHARE on the others), and those whose request for one is queued ahead (a queued
/// ACCESS EXCLUSIVE, say of a VACUUM FULL waiting for the batch in flight, stops every later
/// lock). Without either, a row someone holds locked is in the way (pg_locks shows no row
/// locks): the sessions other than backfill's workers that hold the table locks a row lock
/// comes with, the oldest transaction first.
fn waiting_for(job: &Job, failure: &Failure) -> String {
    const IN_THE_WAY: &str = "
WITH locks AS (
    SELECT l.pid, l.mode, l.granted, l.relation::regclass::text AS relation, a.xact_start,
           a.backend_type,
           l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
               AS conflicting
      FROM pg_catalog.pg_locks l
      JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'relation' AND l.pid <> pg_catalog.pg_backend_pid()
       AND l.relation IN (SELECT c.oid FROM pg_catalog.pg_class c
                           WHERE c.relnamespace = $1
                             AND c.relname IN ('process_instance', 'task', 'json_data',
                                               'process_instance_metadata'))),
named AS (
    SELECT *, pg_catalog.format('process %s (%s on %s)', pid, mode, relation) AS name
      FROM locks
     WHERE conflicting
        OR (NOT EXISTS (SELECT FROM locks WHERE conflicting)
            AND granted AND mode IN ('RowShareLock', 'RowExclusiveLock')
            AND backend_type IS DISTINCT FROM 'backfill worker'))
SELECT pg_catalog.concat_ws('; ',
           'held by ' || pg_catalog.string_agg(name, ', ' ORDER BY xact_start, pid, relation)
                             FILTER (WHERE granted),
           'requested first by ' || pg_catalog.string_agg(name, ', ' ORDER BY xact_start, pid, relation)
                                         FILTER (WHERE NOT granted))
  FROM named";
    // pg_stat_activity reads a copy of the backend status array kept to the end of the
    // transaction, and the worker may have copied it before this transaction began (outside
    // any, it lasts until the next one ends): without a fresh copy a session that connected
    // since (the one holding the lock) would be missing.
    // SAFETY: drops this backend's copies of the statistics, as pg_stat_clear_snapshot() does.
    unsafe { pg_sys::pgstat_clear_snapshot() };
    let in_the_way = caught_unless_interrupt(|| {
        crate::query::optional_value::<String>(IN_THE_WAY, &[job.tables_schema.into()])
    })
    .ok()
    .flatten()
    .filter(|found| !found.is_empty())
    .map_or(String::new(), |found| format!("; {found}"));
    format!("{} waits for a lock: {failure}{in_the_way}", job.label())
}

/// `in_subtransaction`, except that a cancel or shutdown request is never swallowed.
fn caught_unless_interrupt<R>(work: impl FnOnce() -> R) -> Result<R, Failure> {
    in_subtransaction(work).map_err(|failure| {
        if failure.sqlstate.starts_with("57") {
            failure.rethrow();
        }
        failure
    })
}

fn finish(job: &Job) -> Batch {
    let store::Totals {
        processed,
        updated,
        errors,
        seconds,
    } = store::finish(job.id);
    log!(
        "backfill: {} succeeded for model {}: {processed} instances processed, {updated} updated, \
         {errors} errors in {seconds:.1} s",
        job.label(),
        job.model
    );
    if job.parent.is_none() {
        coverage_due(job, job.id);
    }
    if let Some((parent, _)) = &job.parent {
        // In this transaction, after the part's row: the last part to end ends the job.
        if store::settle(job.id, *parent) {
            let summary = store::summary(*parent).ok().flatten().unwrap_or_default();
            log!(
                "backfill: job {parent} {summary} (model {}, its last part ended)",
                job.model
            );
            coverage_due(job, *parent);
        }
    }
    Batch::Finished(JobState::Succeeded)
}

/// The coverage a job that succeeded in this transaction leaves to count after its commit.
struct CoverageDue {
    job_id: i64,
    model: String,
    keys: Vec<String>,
    tables_schema: Oid,
    queued_by: Oid,
}

thread_local! {
    static COVERAGE_DUE: RefCell<Option<CoverageDue>> = const { RefCell::new(None) };
}

fn coverage_due(job: &Job, job_id: i64) {
    COVERAGE_DUE.set(Some(CoverageDue {
        job_id,
        model: job.model.clone(),
        keys: job.paths.iter().map(|p| p.key.clone()).collect(),
        tables_schema: job.tables_schema,
        queued_by: job.role,
    }));
}

/// Once the transaction in which a job succeeded has committed, in a transaction of its own:
/// the coverage of the job's keys, counted with its role's privileges, for the coverage view.
/// Counted in the job's last transaction, it would keep the last batch's instances locked, and
/// the job's last rows and its success unseen, for as long as the count takes (seconds at a
/// million instances). Not counting only costs the view a fresh figure, so a failure warns.
pub fn count_due_coverage() {
    let Some(due) = COVERAGE_DUE.take() else {
        return;
    };
    let job_id = due.job_id;
    // Only for a success that committed: a transaction that finished a job and then failed
    // leaves this set for nothing.
    if !store::succeeded(job_id) {
        return;
    }
    let counted = usable_tables(
        due.tables_schema,
        due.queued_by,
        &[Table::Instances, Table::Metadata],
    )
    .and_then(|(tables, role)| {
        caught_unless_interrupt(|| coverage::count_and_record(&due.model, &due.keys, &tables, role))
    });
    let problem = match counted {
        Ok(_) => return,
        Err(failure) => failure.with_hint(),
    };
    warning!("backfill: job {job_id}: could not count the coverage of its keys: {problem}");
}

fn fail(job: &Job, failure: &Failure, attempts: u32) -> Batch {
    let message = failure.with_hint();
    warning!(
        "backfill: {} failed after {attempts} attempt{} of the batch after instance {}: {message}",
        job.label(),
        if attempts == 1 { "" } else { "s" },
        job.cursor.map_or("<start>".to_owned(), |c| c.to_string())
    );
    fail_job(job.id, &message);
    Batch::Finished(JobState::Failed)
}

/// Marks a job failed with `message` as its last error (also used by the worker when a job
/// keeps failing outside its batches).
pub fn fail_job(job_id: i64, message: &str) {
    store::fail(job_id, message);
}

fn log_progress(job_id: i64) {
    let due = LAST_PROGRESS_LOG
        .get()
        .is_none_or(|last| last.elapsed() >= PROGRESS_LOG_INTERVAL);
    if !due {
        return;
    }
    LAST_PROGRESS_LOG.set(Some(Instant::now()));
    let line = store::summary(job_id);
    // A progress line is not worth failing the batch over.
    match line {
        Ok(Some(line)) => log!("backfill: job {job_id} {line}"),
        Ok(None) => {}
        Err(e) => warning!("backfill: job {job_id}: could not read its progress: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::Counted;

    fn parts(total: i64, max_id: Option<i64>, splits: &[i64]) -> Vec<(i64, i64)> {
        Counted {
            total,
            max_id,
            splits: splits.to_vec(),
        }
        .parts()
    }

    #[test]
    fn parts_end_where_the_split_ids_are_and_count_every_instance_once() {
        // Whole, and nothing at all.
        assert_eq!(parts(5, Some(9), &[]), [(9, 5)]);
        assert_eq!(parts(0, None, &[]), []);
        // Two parts of 10: the first ends at the 5th id.
        assert_eq!(parts(10, Some(40), &[17]), [(17, 5), (40, 5)]);
        // Three of 7 end at positions 2, 4 and 7.
        assert_eq!(parts(7, Some(9), &[3, 6]), [(3, 2), (6, 2), (9, 3)]);
        let many = parts(1_000_003, Some(2_000_000), &[1, 2, 3, 4]);
        assert_eq!(many.iter().map(|p| p.1).sum::<i64>(), 1_000_003);
        assert!(many.iter().all(|p| p.1 == 200_000 || p.1 == 200_001));
    }
}
