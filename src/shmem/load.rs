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
/// Timeout wait), in an extension's wait (where `backfill.wait` sleeps), or for its client.
/// Counting those, an operator waiting for a job, an application
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

/// The roles of the sessions connected to this database under pg_restore's name (its
/// `application_name`, which it sets unless told otherwise). Whether one of them restores is
/// for the caller to judge (`bgw::holds`): any role that may connect can take the name.
pub fn restore_sessions() -> Vec<pg_sys::Oid> {
    // SAFETY: set in every backend connected to a database.
    let here = unsafe { pg_sys::MyDatabaseId };
    with_client_sessions(|sessions| {
        sessions
            .filter(|status| {
                status.st_databaseid == here
                    && !status.st_appname.is_null()
                    // SAFETY: a NUL-terminated name in the status snapshot.
                    && unsafe { std::ffi::CStr::from_ptr(status.st_appname) }.to_bytes()
                        == b"pg_restore"
            })
            .map(|status| status.st_userid)
            .collect()
    })
}

/// Whether the backend `pid` waits rather than works: its wait event's class, read as
/// pg_stat_activity reads it (unlocked; a stale value only shifts one sample of the smoothed
/// load). Reading from disk (IO) and short waits on shared-memory locks (LWLock) are part of
/// working, and count; so does a wait for another process (IPC), which is where a parallel
/// query's leader waits while its workers, not counted here, work.
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
            | pg_sys::PG_WAIT_TIMEOUT
    )
}
