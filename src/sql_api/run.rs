//! `CALL backfill.run`, the manual run of a job in the caller's session, committing after
//! every batch.

use crate::batch::{self, Batch, Begin, Runner};
use crate::job::{self, store, JobState};
use crate::pg::error::{self, require_primary, required};
use crate::pg::settings;
use crate::pg::version;
use crate::shmem;
use pgrx::prelude::*;

// CALL backfill.run is a PL/pgSQL loop over the three functions below, one transaction each:
// run_begin, then run_batch until it returns false, then run_end. Everything it decides is
// here, so the procedure (which cannot carry a search_path of its own: procedures with SET
// cannot COMMIT) calls only schema-qualified functions and compares nothing. A job a worker
// split into parts is run part after part: the session holds one part at a time.

thread_local! {
    /// The job this session ran a batch of last: the next batch of it pauses for batch_delay.
    pub(super) static RAN_A_BATCH_OF: std::cell::Cell<Option<i64>> = const { std::cell::Cell::new(None) };
    /// The job this session runs (as named to run_begin) and the job row it holds: the same,
    /// or the part of it being run.
    pub(super) static RUNNING: std::cell::Cell<Option<(i64, i64)>> = const { std::cell::Cell::new(None) };
}

/// The job row this session runs for `job_id`.
pub(super) fn held_for(job_id: i64) -> i64 {
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
    version::require_current_objects();
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
pub(super) fn begin_next_part(job_id: i64, parts: &[i64]) -> bool {
    parts
        .iter()
        .any(|&part| begin_for_session(job_id, part, Say::Nothing))
}

/// Whether a session told there is nothing to run hears why.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Say {
    /// A NOTICE: the job it asked for is not runnable.
    WhyNot,
    /// Nothing: one of several parts was looked at.
    Nothing,
}

/// Takes `held` (the job, or a part of it) for this session; false, after a NOTICE when
/// `say` asks for one, when there is nothing to run.
pub(super) fn begin_for_session(job_id: i64, held: i64, say: Say) -> bool {
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
