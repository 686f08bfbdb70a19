//! The worker's session: what the worker owns it sets (role, search path, a bounded lock wait
//! in each transaction, how it runs jobs), and each piece of work in a transaction of its own.

use crate::batch::Runner;
use crate::pg::settings;
use crate::pg::subxact::{in_subtransaction, Failure};
use crate::shmem::WORKER_TYPE as BACKEND_TYPE;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use std::ffi::CStr;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

/// The longest the worker waits for a lock unless lock_timeout is configured.
pub(super) const LOCK_WAIT: &CStr = c"10s";

/// Longest wait for the batch turn: a batch stuck behind a lock keeps other workers' batches
/// waiting no longer than this.
pub(super) const TURN_PATIENCE: Duration = Duration::from_secs(1);

/// The worker's batches: it skips a job whose row someone holds locked (an uncommitted
/// cancel) instead of waiting, may use the foreign-key fast path, splits a job that starts
/// across backfill.workers_per_job workers, and waits out locks (`LockWaits`). (Its lock
/// waits are bounded by `in_own_transaction`, for every transaction.)
pub(super) fn worker_runner() -> Runner {
    Runner {
        skip_locked_jobs: true,
        foreign_key_fast_path: true,
        split_into: settings::workers_per_job(),
        wait_out_locks: true,
        resume_stopped: false,
    }
}

/// A lock wait of at most `timeout` for this transaction unless lock_timeout is configured: a
/// batch stuck behind someone's lock fails, is retried, and after the last attempt fails the
/// job, and the worker goes on to the next job instead of waiting for ever.
pub(super) fn bound_lock_wait(timeout: &CStr) {
    // SAFETY: reading the setting's variable; SET LOCAL through the GUC machinery.
    unsafe {
        if pg_sys::LockTimeout == 0 {
            pg_sys::set_config_option(
                c"lock_timeout".as_ptr(),
                timeout.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_LOCAL,
                true,
                0,
                false,
            );
        }
    }
}

/// The worker's session, whatever the database's or role's defaults say (a database owner
/// may ALTER DATABASE ... SET any of these, and a background worker's connection applies
/// them): the bootstrap superuser it connected as, session user and current role alike
/// (`session_authorization` and `role` would otherwise make it another role, which may not
/// even read the job table), a search path no database user can write to, READ COMMITTED,
/// so every statement sees what committed before it, writable transactions, and row-level
/// security applied as to any session.
pub(super) fn fix_session_settings() {
    Spi::run(
        "SELECT pg_catalog.set_config('session_authorization', r.rolname, false),
                pg_catalog.set_config('role', 'none', false),
                pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false),
                pg_catalog.set_config('default_transaction_isolation', 'read committed', false),
                pg_catalog.set_config('default_transaction_read_only', 'off', false),
                pg_catalog.set_config('row_security', 'on', false)
           FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) 10",
    )
    .unwrap_or_else(|e| error!("{BACKEND_TYPE}: could not set its session settings: {e}"));
    let bootstrap = pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID);
    // SAFETY: reading the session's and the current user id.
    let (session, current) = unsafe { (pg_sys::GetSessionUserId(), pg_sys::GetUserId()) };
    if session != bootstrap || current != bootstrap {
        error!(
            "{BACKEND_TYPE}: runs as role {} (session {}) instead of the bootstrap superuser",
            current.to_u32(),
            session.to_u32()
        );
    }
}

/// Runs `work` in a transaction of its own and catches an ERROR in it (rolled back with a
/// subtransaction) instead of letting it end the process. Every lock the transaction waits
/// for, job rows and tables alike, is waited for at most LOCK_WAIT unless lock_timeout is
/// configured: a lock someone holds never stalls the worker.
///
/// The commit is caught too: it can fail after the work succeeded (Citus, committing a batch on
/// the worker nodes, raises when it lost a node's connection), and the transaction is then
/// rolled back and the failure returned, as for an ERROR in the work.
pub(super) fn in_own_transaction<R>(work: impl FnOnce() -> R) -> Result<R, Failure> {
    // SAFETY: what BackgroundWorker::transaction does: a transaction with a snapshot, in a
    // registered background worker (the only caller).
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    bound_lock_wait(LOCK_WAIT);
    let done = in_subtransaction(work);
    PgTryBuilder::new(AssertUnwindSafe(|| {
        // SAFETY: pops the snapshot pushed above, then commits the transaction begun above.
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        Ok(())
    }))
    .catch_others(|caught| {
        // SAFETY: after an ERROR while committing: the transaction is rolled back, as
        // PostgreSQL's own loop does after an error, and this process goes on.
        unsafe { pg_sys::AbortCurrentTransaction() };
        Err(Failure::new(caught))
    })
    .execute()?;
    done
}

pub(super) fn reload_config_if_asked() {
    if BackgroundWorker::sighup_received() {
        // SAFETY: what the postmaster's children do on SIGHUP.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        log!("{BACKEND_TYPE}: configuration reloaded");
    }
}
