//! What backends and the worker share: the worker's slot in shared memory (its latch, pid and
//! database), waking it when a job is queued, and sleeping on a latch. Infrastructure below
//! the job queue, the batch engine and the worker loop.

use crate::error::report_with_hint;
use crate::settings;
use pgrx::prelude::*;
use pgrx::{
    pg_shmem_init, register_xact_callback, PGRXSharedMemory, PgAtomic, PgXactCallbackEvent,
};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What backends know of the worker, in shared memory.
#[derive(Default)]
pub struct WorkerSlot {
    /// Address of the worker's latch (PGPROC.procLatch, in shared memory), 0 when none.
    latch: AtomicU64,
    pid: AtomicI32,
    /// The database it is connected to.
    database: AtomicU32,
    /// Set when connecting to the configured database failed (it does not exist, or it does
    /// not allow connections): the next start waits for it without trying to connect,
    /// instead of failing to connect in a loop.
    database_missing: AtomicBool,
}

unsafe impl PGRXSharedMemory for WorkerSlot {}

static SLOT: PgAtomic<WorkerSlot> = unsafe { PgAtomic::new(c"backfill_worker_slot") };

/// True in every process of a server that loaded the library at start (shared memory and the
/// worker exist only then).
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Sets up the slot; only while shared_preload_libraries are loaded (the worker exists only
/// then).
pub fn init() {
    // SAFETY: reading a postmaster global set while shared_preload_libraries are loaded.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    PRELOADED.store(true, Ordering::Relaxed);
    pg_shmem_init!(SLOT);
}

/// The worker, once connected: backends can now see and wake it.
pub fn worker_ready(pid: i32, database: pg_sys::Oid) {
    let slot = SLOT.get();
    // SAFETY: MyProc is this process's PGPROC; its latch lives in shared memory.
    let latch = unsafe { &raw mut (*pg_sys::MyProc).procLatch } as u64;
    slot.latch.store(latch, Ordering::Release);
    slot.database.store(database.to_u32(), Ordering::Release);
    slot.pid.store(pid, Ordering::Release);
}

/// The worker, on its way out.
pub fn worker_gone() {
    let slot = SLOT.get();
    slot.pid.store(0, Ordering::Release);
    slot.database.store(0, Ordering::Release);
    slot.latch.store(0, Ordering::Release);
}

/// Whether the last attempt to connect to the configured database failed.
pub fn database_missing() -> bool {
    SLOT.get().database_missing.load(Ordering::Acquire)
}

pub fn set_database_missing(missing: bool) {
    SLOT.get()
        .database_missing
        .store(missing, Ordering::Release);
}

pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// The pid of the worker serving this database, if one is running and ready.
pub fn serving_pid() -> Option<i32> {
    if !preloaded() {
        return None;
    }
    let slot = SLOT.get();
    // SAFETY: MyDatabaseId is set in every backend connected to a database.
    let here = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let pid = slot.pid.load(Ordering::Acquire);
    (pid != 0 && slot.database.load(Ordering::Acquire) == here).then_some(pid)
}

/// Why no worker will run jobs queued in this database, as (message, hint); `None` when one
/// will. `live` also asks whether the worker is running right now, not only configured.
pub fn problem(live: bool) -> Option<(String, String)> {
    if !preloaded() {
        return Some((
            "backfill is not in shared_preload_libraries, so no background worker runs backfill jobs".into(),
            "Add shared_preload_libraries = 'backfill' to postgresql.conf and restart PostgreSQL; \
             until then, run a queued job with CALL backfill.run(job_id)."
                .into(),
        ));
    }
    // SAFETY: the name of the database this backend is connected to.
    let here = unsafe { std::ffi::CStr::from_ptr(pg_sys::get_database_name(pg_sys::MyDatabaseId)) }
        .to_string_lossy()
        .into_owned();
    let served = settings::database();
    if served != here {
        return Some((
            format!("the backfill worker serves database \"{served}\" (backfill.database), not \"{here}\""),
            format!(
                "Set backfill.database = '{here}' in postgresql.conf and restart PostgreSQL, \
                 or run jobs of this database with CALL backfill.run(job_id)."
            ),
        ));
    }
    if live && serving_pid().is_none() {
        return Some((
            format!("no backfill worker is running for database \"{here}\" right now"),
            "The server log says why (look for \"backfill worker\"); the job stays queued, \
             and CALL backfill.run(job_id) runs it in your session."
                .into(),
        ));
    }
    None
}

thread_local! {
    static WAKE_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Wakes the worker when the current transaction commits (not before: it would find nothing).
pub fn wake_at_commit() {
    if !preloaded() || WAKE_REGISTERED.get() {
        return;
    }
    WAKE_REGISTERED.set(true);
    register_xact_callback(PgXactCallbackEvent::Commit, || {
        WAKE_REGISTERED.set(false);
        let latch = SLOT.get().latch.load(Ordering::Acquire);
        if latch != 0 {
            // SAFETY: the address is the worker's PGPROC latch in shared memory, valid for the
            // life of the server; setting the latch of a process that has exited is harmless.
            unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
        }
    });
    register_xact_callback(PgXactCallbackEvent::Abort, || WAKE_REGISTERED.set(false));
}

/// Sleeps up to `duration` on this process's latch, returning early when the worker is asked
/// to stop; a backend's cancel request interrupts it with the usual error.
pub fn sleep(duration: Duration) {
    let deadline = Instant::now() + duration;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || shutdown_requested() {
            return;
        }
        // SAFETY: the standard wait on MyLatch, as pg_sleep does.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                left.as_millis().clamp(1, i64::MAX as u128) as i64,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pgrx::check_for_interrupts!();
    }
}

pub fn shutdown_requested() -> bool {
    // SAFETY: a sig_atomic_t flag set by the SIGTERM handler.
    unsafe { std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0 }
}

/// Warns when no worker will pick up the job just queued.
pub fn warn_if_no_worker(job_id: i64) {
    if let Some((message, hint)) = problem(true) {
        report_with_hint(
            PgLogLevel::WARNING,
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("backfill job {job_id} will wait: {message}"),
            hint,
        );
    }
}
