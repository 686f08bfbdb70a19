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
/// A session idle in a transaction uses no CPU, and neither does a statement that sleeps:
/// one in `pg_sleep` (a Timeout wait) or in an extension's wait, which is where
/// `backfill.wait` sleeps. Counting those, an operator waiting for a job, or an application
/// holding a transaction open, would slow a job down several times over.
pub fn busy_sessions() -> usize {
    with_client_sessions(|sessions| {
        sessions
            .filter(|status| {
                matches!(
                    status.st_state,
                    pg_sys::BackendState::STATE_RUNNING | pg_sys::BackendState::STATE_FASTPATH
                ) && !is_sleeping(status.st_procpid)
            })
            .count()
    })
}

/// Whether pg_restore is connected to this database (its sessions' `application_name`, which
/// it sets unless told otherwise): a restore loads the job table before, or after, the tables
/// its jobs read, so no job starts or goes on in the database until it is gone.
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
        })
    })
}

/// Whether the backend `pid` waits in a sleep (pg_sleep, an extension's latch wait) rather
/// than on work: its wait event's class, read as pg_stat_activity reads it (unlocked; a
/// stale value only shifts one sample of the smoothed load).
pub(super) fn is_sleeping(pid: i32) -> bool {
    const CLASS: u32 = 0xFF00_0000;
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
        pg_sys::PG_WAIT_TIMEOUT | pg_sys::PG_WAIT_EXTENSION
    )
}
