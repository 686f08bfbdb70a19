//! One batch of a job, in the caller's transaction: its instances locked, its rows written in one
//! statement, the job advanced; retried, isolated to the instance that fails, or failing the job.

use super::batch_of::{BatchOf, INSERT_WAY, UNIQUE_VIOLATION};
use super::failure::{caught_unless_interrupt, is_instance_failure, is_permanent, waits_out};
use super::fast_path::{fast_path_holds, in_replica_mode, may_lock};
use super::finish::{fail, finish, log_progress};
use super::job_row::Outcome;
use super::job_row::{advance, Lookup};
use super::runner::{Batch, Runner};
use super::statements::Insert;
use super::statements::{run_plan, transaction_start_epoch, Plan};
use super::tables::usable_tables;
use crate::job::store::LockedJob as Job;
use crate::job::{self, JobState};
use crate::pg::error::raise;
use crate::pg::privilege::as_role;
use crate::pg::settings;
use crate::pg::subxact::Failure;
use crate::pg::tables::Table;
use pgrx::prelude::*;
use std::time::Duration;

/// Attempts of a batch that fails as a whole before the job is marked failed.
pub(super) const BATCH_ATTEMPTS: u32 = 5;

/// Pause before the second attempt; doubled for each further one.
pub(super) const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);

/// How the rows a batch writes meet their foreign key to process_instance.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum ForeignKeyCheck {
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
    let mut attempt = 1;
    let (outcome, batch) = loop {
        // The tables are locked and checked in each attempt: a lock someone holds on one of
        // them is waited for and retried as a failure of the batch.
        let tried = usable_tables(
            job.tables_schema,
            job.role,
            &Table::ALL,
            Some(Table::Metadata),
        )
        .and_then(|(tables, role)| {
            // On Citus, a batch takes up to batch_size instances of each shard group.
            let limit = settings::batch_size()
                .saturating_mul(tables.citus.as_ref().map_or(1, |c| c.shard_count));
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
            Err(failure) if runner.wait_out_locks && waits_out(&job, &failure).is_some() => {
                return Batch::Blocked(waits_out(&job, &failure).unwrap_or_default());
            }
            Err(failure) if attempt >= BATCH_ATTEMPTS => return fail(&job, &failure, attempt),
            Err(failure) => {
                let delay = FIRST_RETRY_DELAY * 2u32.pow(attempt - 1);
                warning!(
                    "backfill: job {job_id}: {} failed (attempt {attempt} of {BATCH_ATTEMPTS}), \
                     retrying in {:.1} s: {failure}",
                    job.next_batch(),
                    delay.as_secs_f64(),
                );
                crate::shmem::sleep(delay);
                attempt += 1;
            }
        }
    };
    if outcome.cursor.is_some() {
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

impl BatchOf<'_> {
    /// One attempt: the instances are locked, then written; an attempt that fails as a whole
    /// is rolled back as a whole. The locks are taken in a subtransaction of their own that
    /// commits, so they are held to the end of the transaction even when the writing fails
    /// and is done again instance by instance.
    pub(super) fn attempt(&self, runner: Runner) -> Result<Outcome, Failure> {
        if self.tables.citus.is_some() {
            return self.attempt_distributed();
        }
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
    pub(super) fn lock_instances(&self) -> Locked {
        let for_share = may_lock(self.role, self.tables.instances);
        let plan = Plan::LockInstances {
            tables: self.tables.clone(),
            for_share,
        };
        let args = [
            self.job.model.as_str().into(),
            self.first_after(self.job.cursor).into(),
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
    pub(super) fn more_after(&self, cursor: Option<i64>) -> bool {
        let sql = format!(
            "SELECT EXISTS (SELECT FROM {} i
                             WHERE i.process_model_identifier = $1 AND i.id >= $2 AND i.id <= $3)",
            self.tables.sql_name("process_instance")
        );
        as_role(self.role, || {
            Spi::get_one_with_args::<bool>(
                &sql,
                &[
                    self.job.model.as_str().into(),
                    self.first_after(cursor).into(),
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
    pub(super) fn write_rows(
        &self,
        ids: &[i64],
        foreign_key: ForeignKeyCheck,
    ) -> Result<i64, Failure> {
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
    pub(super) fn write(&self, ids: &[i64], foreign_key: ForeignKeyCheck, insert: Insert) -> i64 {
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
    pub(super) fn isolate(
        &self,
        ids: &[i64],
        foreign_key: ForeignKeyCheck,
    ) -> Result<Outcome, Failure> {
        let mut outcome = Outcome::default();
        for &id in ids {
            match self.write_rows(&[id], foreign_key) {
                Ok(updated) => outcome.updated += updated,
                Err(failure) if is_instance_failure(&failure) => {
                    outcome.skip(self.job.id, id, &failure)
                }
                Err(failure) => return Err(failure),
            }
        }
        Ok(outcome)
    }
}

/// The instances of a batch, and whether they are locked FOR SHARE.
pub(super) struct Locked {
    pub(super) ids: Vec<i64>,
    pub(super) for_share: bool,
}
