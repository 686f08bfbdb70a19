//! What keeps jobs from running now: a pg_restore in progress and backfill.active_hours, each
//! said once in the log.

use super::session::in_own_transaction;
use crate::job::{self, store};
use crate::pg::settings;
use crate::pg::subxact::Failure;
use crate::shmem::{self, WORKER_TYPE as BACKEND_TYPE};
use pgrx::prelude::*;
use std::cell::Cell;

thread_local! {
    /// The log has said that jobs wait for backfill.active_hours (said once until it opens).
    pub(super) static WINDOW_NOTED: Cell<bool> = const { Cell::new(false) };
    /// The log has said that jobs wait for a pg_restore (said once until it is gone).
    pub(super) static RESTORE_NOTED: Cell<bool> = const { Cell::new(false) };
}

/// How soon a worker that left a database pg_restore is restoring looks again.
pub(super) const RESTORE_LOOK_AGAIN: u64 = 5;

/// Whether pg_restore is restoring this database (`restore_in_progress`): its jobs
/// must not read tables that are half loaded (`stopping`: the job this process would run a
/// batch of next). The first time, the log says so.
pub(super) fn held_by_restore(stopping: Option<i64>) -> bool {
    if !restore_in_progress() {
        RESTORE_NOTED.set(false);
        return false;
    }
    match stopping {
        Some(job_id) => log!("{BACKEND_TYPE}: job {job_id} stops at a batch boundary: pg_restore is restoring this database"),
        None if !RESTORE_NOTED.get() => log!(
            "{BACKEND_TYPE}: jobs wait while pg_restore is restoring this database (its tables may be half loaded)"
        ),
        None => {}
    }
    RESTORE_NOTED.set(true);
    true
}

/// Whether pg_restore is restoring this database: a session under its name whose role could
/// restore the job table, a superuser's (its owner is one: only a superuser creates the
/// extension). A session of any other role of that name holds nothing back. The roles are
/// looked at (in a transaction, when none is open) only when there is such a session.
pub(super) fn restore_in_progress() -> bool {
    let roles = shmem::restore_sessions();
    if roles.is_empty() {
        return false;
    }
    // SAFETY: catalog-cache lookups, inside a transaction; the state read first.
    let any_superuser = || {
        roles
            .iter()
            .any(|&role| unsafe { pg_sys::superuser_arg(role) })
    };
    // SAFETY: reads the transaction state of this process.
    if unsafe { pg_sys::IsTransactionState() } {
        any_superuser()
    } else {
        in_own_transaction(any_superuser).unwrap_or(false)
    }
}

/// Whether backfill.active_hours keeps batches from starting now (`stopping`: the job this
/// process would run a batch of next). Without a window no transaction is started.
pub(super) fn outside_active_hours(stopping: Option<i64>) -> Result<bool, Failure> {
    if settings::active_hours().is_none() {
        WINDOW_NOTED.set(false);
        return Ok(false);
    }
    in_own_transaction(|| window_closed_now(stopping))
}

/// `outside_active_hours` in a transaction; the first time the window holds jobs back, the
/// log says until when.
pub(super) fn window_closed_now(stopping: Option<i64>) -> bool {
    let Some(seconds) = job::window_closed_for() else {
        WINDOW_NOTED.set(false);
        return false;
    };
    let hours = settings::active_hours_text();
    let opens = format!("it opens in {}h{:02}m", seconds / 3600, seconds % 3600 / 60);
    match stopping {
        Some(job_id) => {
            log!("{BACKEND_TYPE}: job {job_id} stops at a batch boundary outside backfill.active_hours '{hours}'; {opens}");
            WINDOW_NOTED.set(true);
        }
        None if !WINDOW_NOTED.get() && store::any_unfinished() => {
            log!("{BACKEND_TYPE}: jobs wait for backfill.active_hours '{hours}'; {opens}");
            WINDOW_NOTED.set(true);
        }
        None => {}
    }
    true
}
