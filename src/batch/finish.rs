//! A job's end: success (and a split job's), failure, the coverage counted after the commit, and
//! the progress lines in the server log.

use super::failure::caught_unless_interrupt;
use super::runner::Batch;
use super::tables::usable_tables;
use crate::batch::coverage;
use crate::job::store::{self, LockedJob as Job};
use crate::job::JobState;
use crate::pg::subxact::Failure;
use crate::pg::tables::Table;
use pgrx::prelude::*;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Least time between two progress lines in the server log.
pub(super) const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(5);

thread_local! {
    pub(super) static LAST_PROGRESS_LOG: Cell<Option<Instant>> = const { Cell::new(None) };
}

pub(super) fn finish(job: &Job) -> Batch {
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
        coverage_due(job.id);
    }
    if let Some((parent, _)) = &job.parent {
        // In this transaction, after the part's row: the last part to end ends the job.
        if store::settle(job.id, *parent) {
            let summary = store::summary(*parent).ok().flatten().unwrap_or_default();
            log!(
                "backfill: job {parent} {summary} (model {}, its last part ended)",
                job.model
            );
            coverage_due(*parent);
        }
    }
    Batch::Finished(JobState::Succeeded)
}

thread_local! {
    /// The job that succeeded in this transaction: its coverage is counted after the commit.
    pub(super) static COVERAGE_DUE: Cell<Option<i64>> = const { Cell::new(None) };
}

/// The job's row says it owes the count (`coverage_due`, set with its success in SQL); this
/// process counts it after the commit.
pub(super) fn coverage_due(job_id: i64) {
    COVERAGE_DUE.set(Some(job_id));
}

/// Once the transaction in which a job succeeded has committed, in a transaction of its own:
/// the coverage of the job's keys, counted with its role's privileges, for the coverage view.
/// Counted in the job's last transaction, it would keep the last batch's instances locked, and
/// the job's last rows and its success unseen, for as long as the count takes (seconds at a
/// million instances).
pub fn count_due_coverage() {
    if let Some(job_id) = COVERAGE_DUE.take() {
        count_owed_coverage(job_id);
    }
}

/// Counts the coverage job `job_id` owes, unless it owes none or another process is counting
/// it, and settles the debt in the same transaction: `backfill.wait` returns once it is. A count
/// that fails settles it too, with a warning (`count_coverage` counts again): a script waiting
/// for the job must not wait for a count that cannot come. The debt is settled before the count,
/// so that when settling fails (a user's trigger on the job table refusing the update) the
/// transaction fails before the count's cost, not after it.
pub fn count_owed_coverage(job_id: i64) {
    let Some(owed) = store::lock_owed_coverage(job_id) else {
        return;
    };
    store::coverage_settled(job_id);
    let counted = usable_tables(
        owed.tables_schema,
        owed.queued_by,
        &[Table::Instances, Table::Metadata],
        None,
    )
    .and_then(|(tables, role)| {
        caught_unless_interrupt(|| {
            coverage::count_and_record(&owed.model, &owed.keys, &tables, role)
        })
    });
    if let Err(failure) = counted {
        let problem = failure.with_hint();
        warning!("backfill: job {job_id}: could not count the coverage of its keys: {problem}");
    }
}

pub(super) fn fail(job: &Job, failure: &Failure, attempts: u32) -> Batch {
    let message = failure.with_hint();
    warning!(
        "backfill: {} failed after {attempts} attempt{} of {}: {message}",
        job.label(),
        if attempts == 1 { "" } else { "s" },
        job.next_batch()
    );
    fail_job(job.id, &message);
    Batch::Finished(JobState::Failed)
}

/// Marks a job failed with `message` as its last error (also used by the worker when a job
/// keeps failing outside its batches).
pub fn fail_job(job_id: i64, message: &str) {
    store::fail(job_id, message);
}

pub(super) fn log_progress(job_id: i64) {
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
