//! Draining a database's jobs: the next one claimed, its batches run in turn, its failures
//! outside the batches counted, its parts handed on.

use super::holds::{held_by_restore, outside_active_hours};
use super::lock_waits::LockWaits;
use super::session::{in_own_transaction, reload_config_if_asked, worker_runner, TURN_PATIENCE};
use super::throttle::Throttle;
use super::trouble::Trouble;
use crate::batch::{self, Batch, Begin};
use crate::job::{self, store};
use crate::pg::settings;
use crate::shmem::{self, WORKER_TYPE as BACKEND_TYPE};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::time::{Duration, Instant};

pub(super) enum Drained {
    /// A job was run (to its end, to a stop, or until its row was found locked).
    Ran,
    /// The job met a lock someone holds and was let go, to be tried again later.
    Blocked,
    /// There was nothing to run.
    Idle,
    /// Something failed outside a batch; the worker waited before coming back.
    Failed,
}

/// How often a job may fail outside its batches (taking it, recording a batch, finishing it)
/// before it is marked failed.
pub(super) const JOB_ATTEMPTS: u32 = 3;

/// Runs the oldest runnable job (or part of a split job) to its end (or until shutdown).
pub(super) fn drain_one_job(
    slot: usize,
    trouble: &mut Trouble,
    lock_waits: &mut LockWaits,
) -> Drained {
    if held_by_restore(None) {
        return Drained::Idle;
    }
    match outside_active_hours(None) {
        Ok(false) => {}
        Ok(true) => return Drained::Idle,
        Err(failure) => {
            trouble.wait_after(&failure, "reading the time of day");
            return Drained::Failed;
        }
    }
    let job_id = match in_own_transaction(|| claim_next_job(lock_waits)) {
        Ok(Some(Claimed { job_id, parts_left })) => {
            // After the commit: the split and the part's start are visible to the helper.
            if parts_left {
                shmem::ask_for_helper(slot);
            }
            shmem::mark_running_job(slot);
            job_id
        }
        Ok(None) => {
            count_left_coverage();
            return Drained::Idle;
        }
        Err(failure) => {
            trouble.wait_after(&failure, "looking for a job");
            return Drained::Failed;
        }
    };
    let mut failures = 0;
    let mut throttle = Throttle::default();
    // Standing aside for a lower part of the same job, and whether none is left to.
    let mut aside = false;
    let mut lowest_part = false;
    loop {
        if shmem::shutdown_requested() {
            log!("{BACKEND_TYPE}: stopping job {job_id} at a batch boundary on shutdown request");
            release(slot, job_id, &throttle);
            return Drained::Ran;
        }
        reload_config_if_asked();
        if outside_active_hours(Some(job_id)).unwrap_or(false) || held_by_restore(Some(job_id)) {
            release(slot, job_id, &throttle);
            return Drained::Ran;
        }
        if throttle.application_busy() && !lowest_part {
            match in_own_transaction(|| lower_part_running(job_id)) {
                Ok(true) => {
                    if !aside {
                        shmem::mark_no_job(slot);
                        aside = true;
                    }
                    shmem::sleep(ASIDE_LOOK);
                    throttle.look();
                    continue;
                }
                // Parts do not come back: once none below runs, none will.
                Ok(false) => lowest_part = true,
                Err(_) => {}
            }
        }
        if aside {
            shmem::mark_running_job(slot);
            aside = false;
        }
        let turn = throttle.application_busy() && shmem::take_batch_turn(slot, TURN_PATIENCE);
        let started = Instant::now();
        let batch = in_own_transaction(|| batch::run_batch(job_id, worker_runner()));
        let took = started.elapsed();
        if turn {
            shmem::end_batch_turn(slot, throttle.turn_gap(took));
        }
        match batch {
            Ok(Batch::More) => {
                failures = 0;
                lock_waits.went_on(job_id);
                shmem::sleep(settings::batch_delay() + throttle.pause(took));
            }
            Ok(Batch::Blocked(why)) => {
                // Nothing done, nothing counted: other jobs go first, this one comes back.
                lock_waits.blocked(job_id, &why);
                release(slot, job_id, &throttle);
                return Drained::Blocked;
            }
            Ok(Batch::Busy) => {
                // Someone holds the job row (an open transaction that cancels it): other jobs
                // go first, and this one is looked at again later.
                release(slot, job_id, &throttle);
                return Drained::Ran;
            }
            Ok(Batch::Finished(_)) => {
                lock_waits.went_on(job_id);
                release(slot, job_id, &throttle);
                if let Err(failure) = in_own_transaction(batch::count_due_coverage) {
                    warning!("{BACKEND_TYPE}: job {job_id}: could not count the coverage of its keys: {failure}");
                }
                return Drained::Ran;
            }
            Err(failure) if batch::is_node_unreachable(&failure) => {
                // The batch's commit lost a Citus node: rolled back; waited out like a node the
                // batch could not reach.
                lock_waits.blocked(job_id, &format!("job {job_id} waits for a node: {failure}"));
                release(slot, job_id, &throttle);
                return Drained::Ran;
            }
            Err(failure) => {
                failures += 1;
                let message = failure.to_string();
                if failures >= JOB_ATTEMPTS {
                    warning!(
                        "{BACKEND_TYPE}: job {job_id} failed {failures} times outside a batch; marking it failed: {message}"
                    );
                    if let Err(again) = in_own_transaction(|| batch::fail_job(job_id, &message)) {
                        warning!("{BACKEND_TYPE}: could not mark job {job_id} failed: {again}");
                        trouble.wait_after(&again, "marking a job failed");
                    }
                    release(slot, job_id, &throttle);
                    return Drained::Ran;
                }
                let delay = Duration::from_secs(1) * (1 << (failures - 1));
                warning!(
                    "{BACKEND_TYPE}: job {job_id} failed outside a batch (attempt {failures} of {JOB_ATTEMPTS}), \
                     trying again in {} s: {message}",
                    delay.as_secs()
                );
                shmem::sleep(delay);
            }
        }
    }
}

thread_local! {
    /// The jobs whose owed count failed in this worker (a user's trigger refusing the update
    /// that settles it, say): not tried again by it, or it would try every time it is idle.
    static COUNT_FAILED: RefCell<Vec<i64>> = const { RefCell::new(Vec::new()) };
}

/// The coverage counts a crash left owed (between a job's success and its count), counted when
/// there is nothing else to do: `backfill.wait` waits for them.
fn count_left_coverage() {
    let owed = match in_own_transaction(store::owed_coverage) {
        Ok(owed) => owed,
        Err(failure) => {
            warning!("{BACKEND_TYPE}: could not look for jobs owing a coverage count: {failure}");
            return;
        }
    };
    for job_id in owed {
        if shmem::shutdown_requested() {
            return;
        }
        if COUNT_FAILED.with_borrow(|failed| failed.contains(&job_id)) {
            continue;
        }
        if let Err(failure) = in_own_transaction(|| batch::count_owed_coverage(job_id)) {
            warning!(
                "{BACKEND_TYPE}: job {job_id}: could not count the coverage of its keys (this worker \
                 does not try again; backfill.count_coverage counts on request): {failure}"
            );
            COUNT_FAILED.with_borrow_mut(|failed| failed.push(job_id));
        }
    }
}

/// How often a worker standing aside for a lower part of its job looks again.
pub(super) const ASIDE_LOOK: Duration = Duration::from_millis(100);

/// Whether a lower-numbered part of the job `job_id` is a part of is unfinished and being run
/// by some process. While the application keeps the server busy the batches run one at a
/// time anyway (`shmem::take_batch_turn`); a split job's parts then go one after another, in
/// one process each, instead of alternating between processes, each of whose batches comes
/// after a longer pause and in another place of the tables, and runs a tenth to a fifth
/// longer in front of the application's saves. A part whose runner is gone is not waited for.
pub(super) fn lower_part_running(job_id: i64) -> bool {
    store::unfinished_other_parts(job_id)
        .into_iter()
        .any(|part| part < job_id && !job::is_free(part))
}

/// Lets go of a job: its run lock is released directly (no SQL), outside any transaction.
/// The log says how long the throttle held this process back on it, so that an operator
/// can tell a slow job from a throttled one.
pub(super) fn release(slot: usize, job_id: i64, throttle: &Throttle) {
    batch::end(job_id);
    shmem::mark_no_job(slot);
    if throttle.batches > 0 {
        log!(
            "{BACKEND_TYPE}: job {job_id}: {} batches took {:.3} s; the adaptive throttle paused {:.3} s after them for the server's load",
            throttle.batches,
            throttle.working.as_secs_f64(),
            throttle.paused.as_secs_f64()
        );
    }
}

/// A job this process now holds.
pub(super) struct Claimed {
    pub(super) job_id: i64,
    /// It is a part of a split job, and another part has no runner yet.
    pub(super) parts_left: bool,
}

/// The oldest queued or running job that no one else runs, now held by this process. A
/// split job's parts come where the job does, in id order; a job split just now is looked at
/// again for its first part. Jobs waiting out a lock are skipped until their time
/// (`lock_waits`), and a start that meets a lock makes the job one of them.
pub(super) fn claim_next_job(lock_waits: &mut LockWaits) -> Option<Claimed> {
    let runner = worker_runner();
    let waiting = lock_waits.waiting();
    let mut looked_again = false;
    'look: loop {
        let unfinished = store::runnable();
        for job_id in unfinished.into_iter().filter(|id| !waiting.contains(id)) {
            match batch::begin(job_id, runner) {
                Begin::Started => {
                    return Some(Claimed {
                        job_id,
                        parts_left: other_parts_free(job_id),
                    })
                }
                Begin::Split(_) if !looked_again => {
                    looked_again = true;
                    continue 'look;
                }
                Begin::Blocked(why) => lock_waits.blocked(job_id, &why),
                _ => {}
            }
        }
        return None;
    }
}

/// Whether `job_id` is a part of a job whose other unfinished parts no process holds.
pub(super) fn other_parts_free(job_id: i64) -> bool {
    store::unfinished_other_parts(job_id)
        .into_iter()
        .any(job::is_free)
}
