//! The job's row as a runner reads and advances it: locked at the start of each batch, reached
//! by the TID its last batch wrote.

use super::runner::Runner;
use super::statements::{run_plan, Plan};
use crate::job::store::{self, LockedJob as Job};
use crate::pg::privilege::as_job_table_owner;
use pgrx::prelude::*;
use pgrx::spi::SpiHeapTupleData;
use std::cell::Cell;

thread_local! {
    /// The job this process runs and where its row's latest version was written.
    ///
    /// Every batch updates the job row, so the row gains a version per batch. While any
    /// snapshot older than the job is open (a long report, pg_dump, a session in
    /// backfill.wait), none of those versions can be pruned, and a lookup by id walks the
    /// whole chain from its start: quadratic in the number of batches. Going to the version
    /// by its TID skips the walk; an update by someone else (cancel) is still followed,
    /// forward, by the row lock.
    pub(super) static LAST_TID: Cell<Option<(i64, pg_sys::ItemPointerData)>> = const { Cell::new(None) };
}

impl Job {
    /// "job 7", or "job 9 (a part of job 7)", for log lines.
    pub(super) fn label(&self) -> String {
        match &self.parent {
            Some((parent, _)) => format!("job {} (a part of job {parent})", self.id),
            None => format!("job {}", self.id),
        }
    }

    /// "the first batch" or "the batch after instance 4100", for log lines.
    pub(super) fn next_batch(&self) -> String {
        match self.cursor {
            Some(cursor) => format!("the batch after instance {cursor}"),
            None => "the first batch".to_owned(),
        }
    }

    /// A part whose job failed or was cancelled stops too: true when this one was, just now.
    pub(super) fn stopped_with_its_job(&self) -> bool {
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
    pub(super) fn root(&self) -> i64 {
        self.parent.as_ref().map_or(self.id, |(parent, _)| *parent)
    }

    /// Reads and row-locks the job: a `cancel` waits for the batch in flight, and the batch
    /// sees any cancel committed before it.
    pub(super) fn lock(id: i64, runner: Runner) -> Lookup {
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

pub(super) enum Lookup {
    Found(Job),
    /// Its row is locked by another transaction and the runner does not wait.
    Locked,
    Missing,
}

pub(super) fn advance(job: &Job, outcome: &Outcome) {
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

/// What a batch did, to be added to the job's counters.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub(super) instances: i64,
    pub(super) cursor: Option<i64>,
    pub(super) updated: i64,
    pub(super) errors: i64,
    pub(super) last_error: Option<String>,
}

impl Outcome {
    /// Instance `id` of job `job_id` failed for its own data (`why`): logged, counted, skipped.
    pub(super) fn skip(&mut self, job_id: i64, id: i64, why: &dyn std::fmt::Display) {
        warning!("backfill: job {job_id}: instance {id} failed and is skipped: {why}");
        self.errors += 1;
        self.last_error = Some(format!("instance {id}: {why}"));
    }
}
