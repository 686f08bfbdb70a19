//! What the other sessions are doing, read from the backend status array: the load the throttle
//! follows, and a restore in progress.

use pgrx::prelude::*;

/// Hands `look` the client sessions of the server (any database), this process excluded, as
/// the backend status array shows them (copied once per transaction; the entries are not to
/// be kept beyond the call).
pub(super) fn with_client_sessions<R>(
    look: impl FnOnce(&mut dyn Iterator<Item = &pg_sys::PgBackendStatus>) -> R,
) -> R {
    // SAFETY: the backend status snapshot functions, used as pg_stat_get_activity uses them;
    // the snapshot stays valid until the end of the transaction, after this call.
    let count = unsafe { pg_sys::pgstat_fetch_stat_numbackends() };
    let mut sessions = (1..=count).filter_map(|index| {
        // SAFETY: as above; `index` is within the snapshot.
        let status = unsafe {
            #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
            let entry = pg_sys::pgstat_fetch_stat_local_beentry(index);
            #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
            let entry = pg_sys::pgstat_get_local_beentry_by_index(index);
            entry.as_ref().map(|entry| &entry.backendStatus)
        }?;
        // SAFETY: this process's pid.
        let mine = status.st_procpid == unsafe { pg_sys::MyProcPid };
        (!mine && status.st_backendType == pg_sys::BackendType::B_BACKEND).then_some(status)
    });
    look(&mut sessions)
}

/// Client sessions of the server (any database) running a statement right now, this process
/// excluded: the application's load, as the worker's throttle sees it.
///
/// A session idle in a transaction uses no CPU, and neither does a statement that waits:
/// for a lock (a heavyweight one: a row, a table, an advisory lock), in `pg_sleep` (a
/// Timeout wait), in an extension's wait (where `backfill.wait` sleeps), for its client, or
/// for another process. Counting those, an operator waiting for a job, an application
/// holding a transaction open, or any role that may connect blocking a few sessions on an
/// advisory lock, would slow every job down several times over while using no CPU at all.
pub fn busy_sessions() -> usize {
    with_client_sessions(|sessions| {
        sessions
            .filter(|status| {
                matches!(
                    status.st_state,
                    pg_sys::BackendState::STATE_RUNNING | pg_sys::BackendState::STATE_FASTPATH
                ) && !is_waiting(status.st_procpid)
            })
            .count()
    })
}

/// Whether pg_restore is connected to this database (its sessions' `application_name`, which
/// it sets unless told otherwise): a restore loads the job table before, or after, the tables
/// its jobs read, so no job starts or goes on in the database until it is gone.
///
/// Only a session of a role that could restore the job table counts: a superuser's (the
/// table's owner is one, as only a superuser may create the extension). Any role that may
/// connect can name its session pg_restore; it must not hold every job of the database.
/// Reads the catalogs: call it inside a transaction.
pub fn restore_in_progress() -> bool {
    // SAFETY: set in every backend connected to a database.
    let here = unsafe { pg_sys::MyDatabaseId };
    with_client_sessions(|mut sessions| {
        Iterator::any(&mut sessions, |status| {
            status.st_databaseid == here
                && !status.st_appname.is_null()
                // SAFETY: a NUL-terminated name in the status snapshot.
                && unsafe { std::ffi::CStr::from_ptr(status.st_appname) }.to_bytes()
                    == b"pg_restore"
                // SAFETY: a catalog-cache lookup inside a transaction (see above).
                && unsafe { pg_sys::superuser_arg(status.st_userid) }
        })
    })
}

/// Whether the backend `pid` waits rather than works: its wait event's class, read as
/// pg_stat_activity reads it (unlocked; a stale value only shifts one sample of the smoothed
/// load). Reading from disk (IO) and short waits on shared-memory locks (LWLock) are part of
/// working, and count.
pub(super) fn is_waiting(pid: i32) -> bool {
    const CLASS: u32 = 0xFF00_0000;
    // PG_WAIT_BUFFER_PIN, named PG_WAIT_BUFFERPIN from PostgreSQL 17 on.
    const BUFFER_PIN: u32 = 0x0400_0000;
    // SAFETY: the PGPROC of a live backend, looked up under ProcArrayLock; its wait event is a
    // single aligned word the backend writes and anyone may read.
    let info = unsafe {
        let proc = pg_sys::BackendPidGetProc(pid);
        if proc.is_null() {
            return false;
        }
        std::ptr::read_volatile(&(*proc).wait_event_info)
    };
    matches!(
        info & CLASS,
        pg_sys::PG_WAIT_LOCK
            | BUFFER_PIN
            | pg_sys::PG_WAIT_CLIENT
            | pg_sys::PG_WAIT_EXTENSION
            | pg_sys::PG_WAIT_IPC
            | pg_sys::PG_WAIT_TIMEOUT
    )
}
