//! Exclusive running of a job: a session-level advisory lock of a kind of its own (see
//! `run_lock_tag`). It is released by `release_claim`, by the abort of any top-level
//! transaction of the process that holds it (an interrupted CALL backfill.run lets the job go
//! at once), and, whatever happens, when the process ends.

use crate::pg::query::optional_value;
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use std::cell::Cell;

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
// SAFETY: called only by PostgreSQL's transaction machinery (RegisterXactCallback above), in
// this backend; it touches only this process's thread-local claim and its own lock.
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
